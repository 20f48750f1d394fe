import pytest
import torch

from research.tokenizer.distillation import align_to_frames
from research.tokenizer.teachers import HuggingFaceTeacher


def test_teacher_loads_from_disk_with_hubert_rate(tiny_hubert_dir):
    teacher = HuggingFaceTeacher(model_dir=str(tiny_hubert_dir), layer="avg")
    assert teacher.dim == 32 and teacher.frame_rate == 50.0
    features = teacher(torch.randn(2, 1, 16000) * 0.1)
    assert features.shape == (2, 49, 32)  # HuBERT's conv stack yields 49 frames per second
    assert align_to_frames(features, 50).shape == (2, 50, 32)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_layer_selection_and_average(tiny_hubert_dir):
    audio = torch.randn(1, 1, 8000) * 0.1
    layers = [HuggingFaceTeacher(model_dir=str(tiny_hubert_dir), layer=i)(audio) for i in range(3)]
    average = HuggingFaceTeacher(model_dir=str(tiny_hubert_dir), layer="avg")(audio)
    assert torch.allclose(average, torch.stack(layers).mean(0), atol=1e-5)
    assert not torch.allclose(layers[1], layers[2])
    with pytest.raises(ValueError, match="layer must be"):
        HuggingFaceTeacher(model_dir=str(tiny_hubert_dir), layer=5)


def test_teacher_stays_frozen_in_train_mode(tiny_hubert_dir):
    teacher = HuggingFaceTeacher(model_dir=str(tiny_hubert_dir))
    wrapper = torch.nn.ModuleDict({"teacher": teacher}).train()
    assert not wrapper["teacher"].training
    audio = torch.randn(1, 1, 4000) * 0.1
    assert torch.equal(teacher(audio), teacher(audio))  # no dropout


def test_a_masked_huggingface_teacher_ignores_padding(tmp_path):
    """Layer-norm extractors (HuBERT-large, WavLM) get an attention mask and per-item normalisation: an item's
    valid frames come out the same alone and padded in a batch."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    config = HubertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    torch.manual_seed(0)
    HubertModel(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(tmp_path)
    teacher = HuggingFaceTeacher(model_dir=str(tmp_path), layer="avg")
    assert teacher.takes_mask and teacher.normalize
    short = torch.randn(1, 1, 6000) * 0.3 + 0.05
    batch = torch.cat([torch.randn(1, 1, 16000) * 0.1, torch.nn.functional.pad(short, (0, 10000), value=0.7)])
    features, frames = teacher.encode(batch, torch.tensor([16000, 6000]))
    alone, alone_frames = teacher.encode(short, torch.tensor([6000]))
    assert frames[1] == alone_frames[0] == alone.shape[1]
    # the conv stack's receptive field reaches past the last valid sample only for the last few frames
    assert torch.allclose(features[1, : frames[1] - 2], alone[0, :-2], atol=1e-4)
