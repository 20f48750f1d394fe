"""Padded batches: the tokenizer's losses cover each item's valid samples only, so a zero-padded batch gives the
losses of its items one by one (their mean), whatever the padding holds."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest
import torch

from lit_modules.tokenizer import SpeechTokenizerModule
from research.encoder import ConformerEncoder
from research.tokenizer.codec import CodecOutput, SpeechTokenizerCodec
from research.tokenizer.discriminators import CodecDiscriminator
from research.tokenizer.distillation import DISTILLATION_LOSSES
from research.tokenizer.losses import MultiScaleMelLoss, group_by_length, masked_l1
from research.tokenizer.teachers import EncoderTeacher, HuggingFaceTeacher, PrecomputedTeacher

LENS = [
    1600,
    1000,
    200,
]  # full, padded, and shorter than the discriminator's and the mel loss's shortest input
TEACHER_LENS = [3, 2, 1]  # a 25 Hz teacher, as the datamodule stores it (`teacher_features_lens`)


def tiny_module() -> SpeechTokenizerModule:
    torch.manual_seed(0)
    return SpeechTokenizerModule(
        codec=SpeechTokenizerCodec(
            n_filters=4, dimension=32, codebook_sizes=(32, 32), semantic_dim=16, quantizer={"kmeans_iters": 2}
        ),
        discriminator=CodecDiscriminator(periods=(), msd_rates=(), stft_filters=4, stft_n_ffts=(256, 128)),
        teacher=PrecomputedTeacher(dim=16, frame_rate=25.0),
        generator_optimizer=partial(torch.optim.Adam, lr=1e-3),
        discriminator_optimizer=partial(torch.optim.Adam, lr=1e-3),
    )


def padded_batch_and_output(module: SpeechTokenizerModule) -> tuple[dict, CodecOutput]:
    torch.manual_seed(1)
    audio = torch.zeros(len(LENS), 1, max(LENS))
    features = torch.zeros(len(LENS), max(TEACHER_LENS), 16)
    for i, (n, t) in enumerate(zip(LENS, TEACHER_LENS, strict=True)):
        audio[i, :, :n] = torch.randn(1, n) * 0.1
        features[i, :t] = torch.randn(t, 16)
    batch = {
        "audio": audio,
        "audio_lens": torch.tensor(LENS),
        "teacher_features": features,
        "teacher_features_lens": torch.tensor(TEACHER_LENS),
    }
    with torch.no_grad():
        output = module.codec(audio)
    return batch, output


def item(batch: dict, output: CodecOutput, i: int, codec: SpeechTokenizerCodec) -> tuple[dict, CodecOutput]:
    """Item i alone, unpadded: the batch's valid crop of every input and codec output."""
    n, t = LENS[i], TEACHER_LENS[i]
    f = codec.frames(n)
    single = {
        "audio": batch["audio"][i : i + 1, :, :n],
        "audio_lens": torch.tensor([n]),
        "teacher_features": batch["teacher_features"][i : i + 1, :t],
        "teacher_features_lens": torch.tensor([t]),
    }
    return single, replace(
        output,
        audio=output.audio[i : i + 1, :, :n],
        codes=output.codes[:, i : i + 1, :f],
        semantic=output.semantic[i : i + 1, :f],
        latent=output.latent[i : i + 1, :, :f],
    )


def all_losses(module: SpeechTokenizerModule, batch: dict, output: CodecOutput) -> dict[str, float]:
    with torch.no_grad():
        losses = module.generator_losses(batch, output)
        losses["discriminator"] = module.discriminator_loss(batch, output.audio)
    return {name: float(value) for name, value in losses.items()}


def fill_padding_with_noise(batch: dict, output: CodecOutput, codec: SpeechTokenizerCodec):
    batch = {**batch, "audio": batch["audio"].clone(), "teacher_features": batch["teacher_features"].clone()}
    fake, semantic = output.audio.clone(), output.semantic.clone()
    for i, (n, t) in enumerate(zip(LENS, TEACHER_LENS, strict=True)):
        f = codec.frames(n)
        batch["audio"][i, :, n:] = torch.randn_like(batch["audio"][i, :, n:])
        fake[i, :, n:] = torch.randn_like(fake[i, :, n:])
        semantic[i, f:] = torch.randn_like(semantic[i, f:]) * 5
        batch["teacher_features"][i, t:] = torch.randn_like(batch["teacher_features"][i, t:]) * 5
    return batch, replace(output, audio=fake, semantic=semantic)


def test_padded_batch_losses_are_the_mean_of_its_items_alone():
    module = tiny_module()
    batch, output = padded_batch_and_output(module)
    assert module.adversarial  # adversarial + feature-matching terms included from step 0
    batched = all_losses(module, batch, output)
    items = [all_losses(module, *item(batch, output, i, module.codec)) for i in range(len(LENS))]
    names = ["mel", "waveform", "distillation", "adversarial", "feature", "discriminator", "total"]
    assert set(names) < set(batched)
    for name in names:
        expected = sum(single[name] for single in items) / len(items)
        assert batched[name] == pytest.approx(expected, rel=1e-4), name
    # the items differ, so equal means are not a coincidence of equal items
    assert len({round(single["mel"], 4) for single in items}) == len(LENS)
    module.distill = DISTILLATION_LOSSES["t_axis"]  # the other distillation loss, per frame
    with torch.no_grad():
        batched = module.distillation_loss(batch, output)
        alone = [module.distillation_loss(*item(batch, output, i, module.codec)) for i in range(len(LENS))]
    assert float(batched) == pytest.approx(float(sum(alone)) / len(alone), rel=1e-5)


def test_losses_ignore_what_the_padding_holds():
    module = tiny_module()
    batch, output = padded_batch_and_output(module)
    clean = all_losses(module, batch, output)
    noisy = all_losses(module, *fill_padding_with_noise(batch, output, module.codec))
    for name, value in clean.items():
        assert noisy[name] == pytest.approx(value, rel=1e-5), name


def test_masked_l1_and_mel_loss_by_hand():
    target = torch.zeros(2, 1, 1000)
    reconstruction = torch.zeros(2, 1, 1000)
    reconstruction[0] = 1.0  # item 0: error 1 over all 1000 samples
    reconstruction[1, :, :600] = 3.0  # item 1: error 3 over its 600 valid samples, anything in its padding
    reconstruction[1, :, 600:] = 100.0
    assert masked_l1(reconstruction, target, torch.tensor([1000, 600])) == pytest.approx((1 + 3) / 2)
    mel = MultiScaleMelLoss(n_ffts=(256,), weights=(1.0,))
    audio = torch.randn(2, 1, 1000) * 0.1
    padded = audio.clone()
    padded[1, :, 600:] = 0.5
    per_item = (mel(audio[:1] * 0.5, audio[:1]) + mel(audio[1:, :, :600] * 0.5, audio[1:, :, :600])) / 2
    assert mel(padded * 0.5, padded, torch.tensor([1000, 600])) == pytest.approx(float(per_item), rel=1e-5)


def test_group_by_length_batches_equal_lengths_together():
    groups = group_by_length(torch.tensor([5, 3, 5, 5]), torch.tensor([2, 1, 2, 1]))
    assert [(index.tolist(), lengths) for index, lengths in groups] == [
        ([1], (3, 1)),
        ([3], (5, 1)),
        ([0, 2], (5, 2)),
    ]


def test_teachers_report_valid_frame_counts(tiny_hubert_dir):
    torch.manual_seed(0)
    encoder = ConformerEncoder(d_model=16, num_layers=1, num_heads=2, ffn_dim=32, subsampling_channels=4)
    audio = torch.randn(2, 1, 8000) * 0.1
    lens = torch.tensor([8000, 3000])
    teacher = EncoderTeacher(encoder=encoder, layer=1)
    features, frames = teacher.features_with_lens({"audio": audio, "audio_lens": lens})
    alone, _ = teacher.features_with_lens({"audio": audio[1:, :, :3000], "audio_lens": lens[1:]})
    assert frames[0] == features.shape[1] and frames[1] == alone.shape[1] < features.shape[1]
    hubert = HuggingFaceTeacher(model_dir=str(tiny_hubert_dir), layer=1)
    features, frames = hubert.features_with_lens({"audio": audio, "audio_lens": lens})
    alone = hubert(audio[1:, :, :3000])
    assert frames.tolist() == [features.shape[1], alone.shape[1]] == [24, 9]
