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
