import math
from functools import partial

import pytest
import torch

from lit_modules.ctc_asr import CTCASRModule
from research.asr.ctc import ConformerCTC
from research.encoder import ConformerEncoder, conformer_layer
from research.features import LogMel
from research.text import CharVocabulary, ctc_greedy_decode
from tests.conftest import fit_on_batch


def tiny_model(**kwargs) -> ConformerCTC:
    encoder = ConformerEncoder(
        d_model=32, num_layers=2, num_heads=2, ffn_dim=64, subsampling_channels=8, **kwargs
    )
    return ConformerCTC(encoder=encoder)


def test_vocabulary_round_trip_and_normalisation():
    vocab = CharVocabulary()
    assert len(vocab) == 29 and vocab.blank == 0
    assert vocab.normalize("  Three, ONE!  four ") == "three one four"
    assert vocab.decode(vocab.encode("nine o'clock")) == "nine o'clock"


def test_greedy_decode_collapses_repeats_and_drops_blanks():
    vocab = CharVocabulary()
    o, n, e, space = vocab.index["o"], vocab.index["n"], vocab.index["e"], vocab.index[" "]
    path = [0, o, o, 0, n, e, e, space, o, 0, n, n, e, 0, 0]  # "one one" then padding frames
    log_probs = torch.full((1, len(path), len(vocab)), -10.0)
    log_probs[0, torch.arange(len(path)), torch.tensor(path)] = 0.0
    assert ctc_greedy_decode(log_probs, torch.tensor([13]), vocab) == ["one one"]
    assert ctc_greedy_decode(log_probs, torch.tensor([4]), vocab) == ["o"]


def test_frame_rate_and_shapes():
    model = tiny_model()
    audio = torch.randn(2, 1, 16000)
    log_probs, lens = model(audio, torch.tensor([16000, 8000]))
    assert model.encoder.frame_rate == 25.0
    assert log_probs.shape == (2, 26, 29)
    assert lens.tolist() == [26, 13]
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 26), atol=1e-5)
    layers = model.encoder(audio, torch.tensor([16000, 8000]), output_layers=True).layers
    assert len(layers) == 3 and all(t.shape == (2, 26, 32) for t in layers)


def test_encoder_frames_do_not_depend_on_the_padding_of_their_batch():
    torch.manual_seed(0)
    encoder = tiny_model(kernel_size=7, dropout=0.0).encoder.eval()
    feats = torch.randn(2, 200, 80)  # the short utterance's padding holds noise, not zeros
    with torch.no_grad():
        batched = encoder.encode_features(feats, torch.tensor([200, 90]), output_layers=True)
        alone = encoder.encode_features(feats[1:, :90], torch.tensor([90]), output_layers=True)
        frames = int(alone.lens[0])
        assert frames == 23 and batched.lens.tolist() == [50, 23]
        for in_batch, by_itself in zip(batched.layers, alone.layers, strict=True):
            assert torch.allclose(in_batch[1, :frames], by_itself[0], atol=1e-5)
        # without padding the layer is torchaudio's own
        layer, x = encoder.conformer.conformer_layers[0], torch.randn(30, 2, 32)
        no_padding = torch.zeros(2, 30, dtype=torch.bool)
        assert torch.allclose(conformer_layer(layer, x, no_padding), layer(x, no_padding), atol=1e-5)


def test_log_mel_lengths_and_normalisation():
    mel = LogMel()
    feats, lens = mel(torch.randn(2, 1, 16000), torch.tensor([16000, 4000]))
    assert feats.shape == (2, 101, 80) and lens.tolist() == [101, 26]
    assert feats[1, 26:].abs().sum() == 0  # padding frames are zeroed
    valid = feats[0]
    assert abs(valid.mean().item()) < 1e-4 and math.isclose(valid.std(0).mean().item(), 1.0, rel_tol=0.05)


def test_ctc_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = tiny_model(dropout=0.0)
    audio = torch.randn(2, 1, 16000) * 0.1
    lens = torch.tensor([16000, 16000])
    texts = ["one two", "nine"]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        log_probs, out_lens = model(audio, lens)
        loss = model.loss(log_probs, out_lens, texts)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_sft_freezes_the_encoder_for_its_first_steps_and_scales_its_learning_rate(speech_batch):
    batch = {**speech_batch, "text": ["zero", "three", "five", "eight"]}

    def fitted(max_steps: int) -> tuple[CTCASRModule, dict]:
        torch.manual_seed(0)
        module = CTCASRModule(
            net=tiny_model(),
            optimizer=partial(torch.optim.AdamW, lr=1e-3),
            freeze_encoder_steps=2,
            encoder_lr_scale=0.25,
        )
        start = {name: value.clone() for name, value in module.net.state_dict().items()}
        fit_on_batch(module, batch, max_steps=max_steps, names=())
        return module, start

    def moved(module: CTCASRModule, start: dict, prefix: str) -> bool:
        state = module.net.state_dict()
        return any(not torch.equal(state[name], start[name]) for name in start if name.startswith(prefix))

    frozen, start = fitted(2)
    assert moved(frozen, start, "head.") and not moved(frozen, start, "encoder.")
    thawed, start = fitted(3)
    assert moved(thawed, start, "encoder.")
    head_group, encoder_group = thawed.trainer.optimizers[0].param_groups
    assert encoder_group["lr"] == pytest.approx(0.25 * head_group["lr"])


def test_sft_can_reset_the_top_encoder_layers():
    net = tiny_model()
    with torch.no_grad():
        for value in net.parameters():
            value.fill_(0.5)  # as trained weights: no initialiser draws this
    before = {name: value.clone() for name, value in net.encoder.state_dict().items()}
    CTCASRModule(net=net, optimizer=partial(torch.optim.AdamW, lr=1e-3), reset_encoder_layers=1)
    changed = {
        name for name, value in net.encoder.state_dict().items() if not torch.equal(value, before[name])
    }
    top = "conformer.conformer_layers.1."
    assert {name for name in before if name.startswith(top)} <= changed  # every weight of the last layer anew
    assert all(name.startswith(top) for name in changed)  # nothing below it moves
    with pytest.raises(ValueError, match="cannot reset 3 of 2 layers"):
        net.encoder.reset_top_layers(3)


def test_encoder_output_from_audio_is_the_same_alone_or_batched():
    torch.manual_seed(0)
    encoder = ConformerEncoder(
        d_model=16, num_layers=2, num_heads=2, ffn_dim=32, subsampling_channels=4
    ).eval()
    audio = torch.randn(2, 1, 16000) * 0.1
    audio[1, :, 9001:] = 0  # the short item's padding
    lens = torch.tensor([16000, 9001])
    with torch.no_grad():
        batched = encoder(audio, lens)
        alone = encoder(audio[1:, :, :9001], lens[1:])
    frames = int(alone.lens[0])
    assert int(batched.lens[1]) == frames
    assert torch.allclose(batched.hidden[1, :frames], alone.hidden[0], atol=1e-5)
