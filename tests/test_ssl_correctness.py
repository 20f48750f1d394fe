"""LUISE correctness: random-projection labels independent of the autocast precision; an empty batch still trains
every parameter (the DDP-safe zero loss)."""

from functools import partial

import torch

from lit_modules.luise import LUISEModule
from research.encoder import SUBSAMPLING, ConformerEncoder
from research.features import LogMel
from research.ssl.targets import RandomProjectionQuantizer, stack_frames
from tests.conftest import assert_empty_batch_step_is_a_connected_zero


def voiced_audio(seconds: float = 2.0, sample_rate: int = 16000) -> tuple[torch.Tensor, torch.Tensor]:
    """(2, 1, T) speech-like audio: a gliding harmonic tone with a syllable-rate envelope, and noise."""
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 120 + 40 * torch.sin(2 * torch.pi * 0.7 * t)
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / sample_rate
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 20)) * (
        0.5 + 0.5 * torch.sin(2 * torch.pi * 3 * t)
    )
    noise = torch.randn(2, t.shape[0], generator=generator)
    audio = torch.stack([voiced + 0.05 * noise[0], 0.1 * noise[1]])[:, None]
    return audio, torch.full((2,), t.shape[0])


def test_random_projection_labels_are_float32_under_bf16_autocast():
    feats, _ = LogMel()(*voiced_audio())
    stacked = stack_frames(feats, SUBSAMPLING)
    quantizer = RandomProjectionQuantizer(input_dim=SUBSAMPLING * 80)  # BEST-RQ sizes: 16-d, 8192 codes
    reference = quantizer(stacked)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = quantizer(stacked)
        assert under_autocast.dtype == torch.int64
    assert torch.equal(under_autocast, reference)


def tiny_luise() -> LUISEModule:
    encoder = ConformerEncoder(d_model=16, num_layers=1, num_heads=2, ffn_dim=32, subsampling_channels=4)
    return LUISEModule(
        encoder=encoder,
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        quantizer=RandomProjectionQuantizer(input_dim=SUBSAMPLING * 80, codebook_size=32),
        mask_start_prob=0.1,
        mask_span=4,
    )


def test_luise_labels_the_same_under_bf16_autocast():
    module = tiny_luise()
    audio, lens = voiced_audio()
    feats, _ = module.encoder.features(audio, lens)
    frames = -(-feats.shape[1] // SUBSAMPLING)
    reference, _ = module.labels({}, feats, frames)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast, _ = module.labels({}, feats, frames)
    assert torch.equal(under_autocast, reference)


def test_luise_empty_batch_gives_a_zero_loss_reaching_every_trainable_parameter():
    assert_empty_batch_step_is_a_connected_zero(tiny_luise())
