import pytest
import torch

from research.acllm.converter import Converter


def test_splicing_keeps_the_tail_and_matches_hand_computation():
    converter = Converter(input_dim=2, output_dim=3, splice=4)
    frames = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
    out, lens = converter(frames, torch.tensor([6, 3]))
    assert out.shape == (2, 2, 3) and lens.tolist() == [
        2,
        1,
    ]  # 6 frames -> 2 groups, the last one half padding
    weight, bias = converter.project.weight, converter.project.bias
    first_item_tail = torch.cat([frames[0, 4:].flatten(), torch.zeros(4)])  # frames 4, 5 then zero padding
    assert torch.allclose(out[0, 1], weight @ first_item_tail + bias)
    second_item = torch.cat([frames[1, :3].flatten(), torch.zeros(2)])  # frame 3 is batch padding: zeroed
    assert torch.allclose(out[1, 0], weight @ second_item + bias)


def test_an_item_gives_the_same_output_alone_and_in_a_padded_batch():
    torch.manual_seed(0)
    converter = Converter(input_dim=8, output_dim=16, splice=4, projection="mlp", hidden_dim=32)
    short = torch.randn(1, 7, 8)
    batch = torch.cat([torch.randn(1, 13, 8), torch.cat([short, torch.randn(1, 6, 8)], dim=1)])
    out, lens = converter(batch, torch.tensor([13, 7]))
    alone, alone_lens = converter(short, torch.tensor([7]))
    assert lens.tolist() == [4, 2] and alone_lens.tolist() == [2]
    assert torch.allclose(out[1, :2], alone[0], atol=1e-6)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="projection must be"):
        Converter(input_dim=2, output_dim=2, projection="conv")
    with pytest.raises(ValueError, match="splice must be"):
        Converter(input_dim=2, output_dim=2, splice=0)
