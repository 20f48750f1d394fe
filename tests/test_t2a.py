"""Rectified-flow text-to-audio: the flow loss, the Euler sampler with guidance and per-sample seeds, the DiT's
null condition and zero output, the representations and conditioners, and the SFT LightningModule."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from research.t2a.code_encoder import CodeConditioner
from research.t2a.flow import (
    flow_matching_errors,
    flow_matching_loss,
    interpolate,
    sample_times,
    velocity_target,
)
from research.t2a.generator import Condition, DiT
from research.t2a.model import TextToAudio
from research.t2a.representation import CodecLatentRepresentation, MelRepresentation
from research.t2a.sampler import euler_sample, guided, initial_noise
from research.t2a.text_encoder import CharTextEncoder, PretrainedTextEncoder
from tests.conftest import TINY_T2A

F64 = torch.float64
CAPTIONS = [
    "george, a man with a Greek accent, says seven",
    "jackson, a man with an American accent, says three",
    "theo, a man with an American accent, says eight",
]
TINY_CODEC = {
    "_target_": "research.tokenizer.codec.SpeechTokenizerCodec",
    "sample_rate": 16000,
    "n_filters": 4,
    "dimension": 16,
    "strides": [8, 5, 4, 2],
    "lstm_layers": 1,
    "codebook_sizes": [16, 16],
    "semantic_dim": 8,
    "quantizer": {"kmeans_iters": 2},
}


def write_tiny_codec_checkpoint(path: Path) -> Path:
    """A checkpoint in the layout experiments.train writes (its config and state_dict), holding a randomly
    initialised tiny SpeechTokenizer codec under `model.codec`: what `load_submodule(key="codec")` reads."""
    torch.manual_seed(0)
    codec = instantiate(TINY_CODEC)
    state = {f"codec.{key}": value for key, value in codec.state_dict().items()}
    torch.save({"voxlab_config": {"model": {"codec": dict(TINY_CODEC)}}, "state_dict": state}, path)
    return path


def tiny_model(**generator) -> TextToAudio:
    torch.manual_seed(0)
    options = {"d_model": 32, "num_layers": 1, "num_heads": 2, **generator}
    return TextToAudio(
        representation=MelRepresentation(n_mels=16, n_fft=256, hop_length=128, seconds=0.5),
        conditioner=CharTextEncoder(d_model=16, num_layers=1, num_heads=2, ffn_dim=32),
        generator=lambda **sizes: DiT(**sizes, **options),
    )


def perturb_(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Move every weight off its initial value (zero-initialised layers included), so outputs are non-trivial."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return module


# ---------------------------------------------------------------- flow matching


def test_interpolation_and_target_by_hand():
    x0 = torch.tensor([[[1.0, 2.0]], [[-1.0, 0.5]]], dtype=F64)
    noise = torch.tensor([[[0.5, -1.0]], [[2.0, 0.0]]], dtype=F64)
    t = torch.tensor([0.25, 0.8], dtype=F64)
    expected_xt = torch.tensor(
        [[[0.75 * 1 + 0.25 * 0.5, 0.75 * 2 + 0.25 * -1]], [[0.2 * -1 + 0.8 * 2, 0.2 * 0.5 + 0.8 * 0]]],
        dtype=F64,
    )
    torch.testing.assert_close(interpolate(x0, noise, t), expected_xt)
    torch.testing.assert_close(
        velocity_target(x0, noise), torch.tensor([[[-0.5, -3.0]], [[3.0, -0.5]]], dtype=F64)
    )
    # t = 0 is the data, t = 1 the noise
    torch.testing.assert_close(interpolate(x0, noise, torch.zeros(2, dtype=F64)), x0)
    torch.testing.assert_close(interpolate(x0, noise, torch.ones(2, dtype=F64)), noise)


def test_per_sample_errors_by_hand_and_what_the_model_sees():
    x0 = torch.tensor([[[1.0, 2.0, 3.0]], [[0.0, -1.0, 1.0]]], dtype=F64)  # (B=2, C=1, T=3)
    noise = torch.tensor([[[0.0, 0.0, 1.0]], [[1.0, 1.0, 1.0]]], dtype=F64)
    t = torch.tensor([0.5, 0.1], dtype=F64)
    seen = {}

    def model(x_t, tt, cond):
        seen.update(x_t=x_t, t=tt, cond=cond)
        return torch.full_like(x_t, 0.5)

    errors = flow_matching_errors(model, x0, "a condition", noise, t)
    # targets noise - x0: [-1, -2, -2] and [1, 2, 0]; errors (0.5 - target)^2
    first = ((0.5 + 1) ** 2 + (0.5 + 2) ** 2 + (0.5 + 2) ** 2) / 3
    second = ((0.5 - 1) ** 2 + (0.5 - 2) ** 2 + (0.5 - 0) ** 2) / 3
    torch.testing.assert_close(errors, torch.tensor([first, second], dtype=torch.float32))
    torch.testing.assert_close(seen["x_t"], torch.tensor([[[0.5, 1.0, 2.0]], [[0.1, -0.8, 1.0]]], dtype=F64))
    assert seen["t"] is t and seen["cond"] == "a condition"

    # masked frames count for nothing: the second sample's last frame is left out
    mask = torch.tensor([[True, True, True], [True, True, False]])
    masked = flow_matching_errors(model, x0, None, noise, t, mask)
    torch.testing.assert_close(masked, torch.tensor([first, ((0.5 - 1) ** 2 + (0.5 - 2) ** 2) / 2]))
    # ... whatever the model predicts there
    wild = lambda x_t, tt, c: torch.where(mask[:, None, :], torch.full_like(x_t, 0.5), 1e6)  # noqa: E731
    torch.testing.assert_close(flow_matching_errors(wild, x0, None, noise, t, mask), masked)
    torch.testing.assert_close(
        flow_matching_loss(model, x0, None, noise=noise, t=t, mask=mask), masked.mean()
    )


def test_errors_average_over_channels_too():
    x0 = torch.zeros(1, 2, 2)
    noise = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    errors = flow_matching_errors(lambda x, t, c: torch.zeros_like(x), x0, None, noise, torch.tensor([0.3]))
    torch.testing.assert_close(errors, torch.tensor([(1 + 4 + 9 + 16) / 4]))


def test_times_are_logit_normal():
    generator = torch.Generator().manual_seed(0)
    t = sample_times(200_000, generator)
    assert t.shape == (200_000,) and bool(((t > 0) & (t < 1)).all())
    logit = torch.log(t) - torch.log1p(-t)
    assert abs(float(logit.mean())) < 0.01 and abs(float(logit.std()) - 1.0) < 0.01
    shifted = sample_times(200_000, generator, mean=1.0, std=0.5)
    logit = torch.log(shifted) - torch.log1p(-shifted)
    assert abs(float(logit.mean()) - 1.0) < 0.01 and abs(float(logit.std()) - 0.5) < 0.01
    # a seeded generator gives the same times again
    again = sample_times(5, torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, sample_times(5, torch.Generator().manual_seed(3)))


# ---------------------------------------------------------------- Euler sampler and guidance


def test_euler_integrates_a_constant_field_exactly():
    x1 = torch.tensor([[[1.0, -2.0]]], dtype=F64)
    c = torch.tensor([[[0.3, 0.7]]], dtype=F64)
    x0 = euler_sample(lambda x, t, unconditional: c.expand_as(x), x1, steps=7, guidance=1.0)
    torch.testing.assert_close(x0, x1 - c)  # integral of c over t from 1 to 0


def test_euler_on_a_linear_field_is_the_euler_product():
    x1 = torch.tensor([[[2.0, -1.0, 0.5]]], dtype=F64)
    steps = 10
    x0 = euler_sample(lambda x, t, unconditional: x, x1, steps=steps, guidance=1.0)
    torch.testing.assert_close(x0, x1 * (1 - 1 / steps) ** steps)


def test_euler_evaluates_the_field_at_the_step_start_times():
    times = []

    def field(x, t, unconditional):
        times.append(float(t[0]))
        return t[:, None, None].expand_as(x)  # v = t: Euler sums t_i * dt over t_i = 1, 3/4, 1/2, 1/4

    x0 = euler_sample(field, torch.zeros(2, 1, 1, dtype=F64), steps=4, guidance=1.0)
    assert times == [1.0, 0.75, 0.5, 0.25]
    torch.testing.assert_close(x0, torch.full((2, 1, 1), -(1 + 0.75 + 0.5 + 0.25) / 4, dtype=F64))


def test_guidance_one_is_the_conditional_model_alone():
    calls = []

    def field(x, t, unconditional):
        calls.append(unconditional)
        return torch.full_like(x, 5.0 if unconditional else 2.0)

    x1 = torch.zeros(1, 1, 1, dtype=F64)
    x0 = euler_sample(field, x1, steps=3, guidance=1.0)
    assert calls == [False, False, False]
    torch.testing.assert_close(x0, x1 - 2.0)


def test_guidance_combines_by_hand():
    field = lambda x, t, unconditional: torch.full_like(x, 5.0 if unconditional else 2.0)  # noqa: E731
    x = torch.zeros(1, 1, 1, dtype=F64)
    t = torch.ones(1, dtype=F64)
    torch.testing.assert_close(guided(field, x, t, 4.5), torch.full_like(x, 5.0 + 4.5 * (2.0 - 5.0)))
    torch.testing.assert_close(guided(field, x, t, 0.0), torch.full_like(x, 5.0))  # g = 0: unconditional
    x0 = euler_sample(field, x, steps=5, guidance=3.0)
    torch.testing.assert_close(x0, x - (5.0 + 3.0 * (2.0 - 5.0)))


def test_model_guidance_one_equals_the_conditional_model():
    model = perturb_(tiny_model()).eval()
    noise = model.initial_noise([4, 5])
    cond = model.condition(CAPTIONS[:2])
    conditional = lambda x, t, unconditional: model.velocity(x, t, cond)  # noqa: E731
    expected = euler_sample(conditional, noise, steps=3, guidance=1.0)
    torch.testing.assert_close(model.sample(CAPTIONS[:2], [4, 5], steps=3, guidance=1.0), expected)
    # and guidance 2 by hand: v_u + 2 (v_c - v_u), v_u from the null condition
    everyone = torch.ones(2, dtype=torch.bool)

    def by_hand(x, t, unconditional):
        v_c, v_u = model.velocity(x, t, cond), model.velocity(x, t, cond, everyone)
        return v_u + 2.0 * (v_c - v_u)

    torch.testing.assert_close(
        model.sample(CAPTIONS[:2], [4, 5], steps=3, guidance=2.0),
        euler_sample(by_hand, noise, steps=3, guidance=1.0),
    )


# ---------------------------------------------------------------- per-sample seeds


def test_initial_noise_comes_from_each_samples_own_seed():
    noise = initial_noise((2, 3), [11, 12, 11])
    torch.testing.assert_close(noise[0], torch.randn(2, 3, generator=torch.Generator().manual_seed(11)))
    torch.testing.assert_close(noise[1], torch.randn(2, 3, generator=torch.Generator().manual_seed(12)))
    assert not torch.equal(noise[0], noise[1]) and torch.equal(noise[0], noise[2])
    # independent of the batch: sample i's noise depends only on its seed
    torch.testing.assert_close(initial_noise((2, 3), [12]), noise[1:2])
    torch.testing.assert_close(initial_noise((2, 3), [5, 12, 7])[1], noise[1])


def test_sampling_is_reproducible_per_seed_and_leaves_the_global_rng_alone():
    model = perturb_(tiny_model()).eval()
    state = torch.get_rng_state()
    first = model.sample(CAPTIONS, [1, 2, 3], steps=4)
    assert torch.equal(torch.get_rng_state(), state)  # no global RNG draws
    torch.manual_seed(999)  # a different global state changes nothing
    torch.testing.assert_close(model.sample(CAPTIONS, [1, 2, 3], steps=4), first)
    # different seeds, different samples (same caption)
    twice = model.sample([CAPTIONS[0], CAPTIONS[0]], [1, 2], steps=4)
    assert not torch.allclose(twice[0], twice[1])
    # a sample does not depend on its batch-mates
    alone = model.sample([CAPTIONS[1]], [2], steps=4)
    torch.testing.assert_close(alone[0], first[1], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="one seed per sample"):
        model.sample(CAPTIONS, [1, 2], steps=2)


# ---------------------------------------------------------------- the DiT


def test_output_projection_starts_at_zero():
    model = tiny_model()
    assert not model.generator.output.weight.any() and not model.generator.output.bias.any()
    x = torch.randn(3, *model.shape)
    v = model.velocity(x, torch.rand(3), model.condition(CAPTIONS))
    assert v.shape == x.shape and not v.any()


def test_condition_dropout_uses_the_learned_null_condition():
    model = perturb_(tiny_model()).eval()
    generator = model.generator
    x, t = torch.randn(2, *model.shape), torch.tensor([0.3, 0.6])
    a, b = model.condition(CAPTIONS[:2]), model.condition([CAPTIONS[2], "something else entirely"])
    assert not torch.allclose(generator(x, t, a), generator(x, t, b))  # the condition matters
    dropped = torch.ones(2, dtype=torch.bool)
    torch.testing.assert_close(generator(x, t, a, dropped), generator(x, t, b, dropped))  # ... unless dropped
    # dropped = one null token in place of the caption
    null = Condition(
        tokens=generator.null_token.expand(2, 1, -1), token_mask=torch.ones(2, 1, dtype=torch.bool)
    )
    torch.testing.assert_close(generator(x, t, a, dropped), generator(x, t, null), atol=1e-6, rtol=1e-5)
    # per sample: only the second one is dropped
    some = torch.tensor([False, True])
    mixed = generator(x, t, a, some)
    torch.testing.assert_close(mixed[0], generator(x, t, a)[0])
    torch.testing.assert_close(mixed[1], generator(x, t, a, dropped)[1])
    # the null token is a parameter that trains
    model.train()
    x0, mask = model.encode(torch.randn(2, 1, 8000) * 0.1)
    model.errors(x0, a, torch.randn_like(x0), t, mask, dropped).mean().backward()
    assert generator.null_token.grad is not None and generator.null_token.grad.any()


def test_drop_mask_rate_and_errors_never_drop_unless_told():
    model = tiny_model(cond_dropout=0.25)
    drops = model.drop_mask(40_000, torch.Generator().manual_seed(0))
    assert drops.dtype == torch.bool and abs(float(drops.float().mean()) - 0.25) < 0.01
    perturb_(model).train()
    x0, mask = model.encode(torch.randn(3, 1, 8000) * 0.1)
    cond, noise, t = model.condition(CAPTIONS), torch.randn_like(x0), torch.rand(3)
    torch.testing.assert_close(model.errors(x0, cond, noise, t, mask), model.errors(x0, cond, noise, t, mask))


def test_policy_and_frozen_reference_share_noise_and_times():
    """What CRPO does: a deepcopy reference gives the same errors until the policy moves."""
    policy = perturb_(tiny_model())
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    x0, mask = policy.encode(torch.randn(2, 1, 8000) * 0.1)
    noise, t = torch.randn_like(x0), torch.tensor([0.2, 0.7])
    cond_p, cond_r = policy.condition(CAPTIONS[:2]), reference.condition(CAPTIONS[:2])
    torch.testing.assert_close(
        policy.errors(x0, cond_p, noise, t, mask), reference.errors(x0, cond_r, noise, t, mask)
    )


# ---------------------------------------------------------------- representations


def test_mel_round_trip_through_griffin_lim(mirror):
    from research.audio import load_audio

    rep = MelRepresentation()
    assert (rep.samples, rep.frames, rep.channels) == (16000, 63, 80)
    wave = load_audio(mirror / "fsdd" / "recordings" / "7_george_3.wav", sample_rate=16000)[None]
    x0, mask = rep.encode(wave, torch.tensor([wave.shape[-1]]))
    assert x0.shape == (1, 80, 63) and mask.shape == (1, 63) and bool(mask.all())
    assert -1.5 < float(x0.mean()) < 1.5 and 0.5 < float(x0.std()) < 2.0  # about unit scale
    audio = rep.decode(x0)
    assert (
        audio.shape == (1, 1, 16000) and bool(torch.isfinite(audio).all()) and float(audio.abs().max()) <= 1
    )
    again, _ = rep.encode(audio)
    speech = x0 > -0.5  # Griffin-Lim recovers the spectrogram where there is sound
    assert float((again - x0)[speech].abs().mean()) < 0.3
    torch.testing.assert_close(rep.decode(x0), audio)  # deterministic: no random phase


def test_mel_window_crops_pads_with_silence_and_masks():
    rep = MelRepresentation(seconds=0.5, mask_padding=True)
    audio = torch.randn(2, 1, 12000) * 0.1
    lens = torch.tensor([12000, 2560])
    x0, mask = rep.encode(audio, lens)
    assert x0.shape == (2, 80, 8000 // 256 + 1)
    assert mask[0].all() and int(mask[1].sum()) == 2560 // 256 + 1
    # what lies past a clip's length is silence: the log floor
    silence = (math.log(1e-5) - rep.mean) / rep.std
    torch.testing.assert_close(x0[1, :, -3:], torch.full((80, 3), silence))
    crop, _ = rep.encode(audio[:, :, :8000])
    torch.testing.assert_close(x0[0], crop[0])  # longer clips are cropped to the window


@pytest.fixture(scope="module")
def tiny_codec_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_codec_checkpoint(tmp_path_factory.mktemp("codec") / "tokenizer.ckpt")


def test_codec_latents_encode_and_decode(tiny_codec_checkpoint):
    from experiments.core.checkpoints import load_submodule

    codec = load_submodule("codec", ckpt_path=str(tiny_codec_checkpoint))
    rep = CodecLatentRepresentation(codec=codec, seconds=0.5, scale=2.0)
    assert (rep.frames, rep.samples, rep.channels, rep.hop_length) == (25, 8000, 16, 320)
    audio = torch.randn(2, 1, 9000) * 0.1
    x0, mask = rep.encode(audio, torch.tensor([9000, 4000]))
    assert x0.shape == (2, 16, 25) and mask.all()
    torch.testing.assert_close(x0 * 2.0, codec.encoder(rep.fit(audio, torch.tensor([9000, 4000]))[0]))
    decoded = rep.decode(x0)
    assert decoded.shape == (2, 1, 8000) and bool(torch.isfinite(decoded).all())
    rep.train()
    assert not rep.codec.training and not any(p.requires_grad for p in rep.codec.parameters())


def test_code_conditioner_aligns_rvq1_codes_to_the_frames(tiny_codec_checkpoint):
    from experiments.core.checkpoints import load_submodule

    codec = load_submodule("codec", ckpt_path=str(tiny_codec_checkpoint))
    conditioner = CodeConditioner(codec=codec, d_model=8)
    assert (conditioner.codebook_size, conditioner.code_hop_length, conditioner.pad_id) == (16, 320, 16)
    # mel frame j (hop 256) reads code frame floor(256 j / 320)
    index = conditioner.alignment(code_count=4, frames=6, hop_length=256)
    assert index.tolist() == [0, 0, 1, 2, 3, 3]  # 0, 0.8, 1.6, 2.4, 3.2, 4.0 -> clamped to the last
    audio = torch.randn(2, 1, 8000) * 0.1
    batch = {"audio": audio, "audio_lens": torch.tensor([8000, 1000])}
    codes = conditioner.inputs_from_batch(batch, samples=3200)
    assert codes.shape == (2, 10)
    expected = codec.encode(audio[:, :, :3200], 1)[0]
    torch.testing.assert_close(codes[0], expected[0])
    assert codes[1, 4:].eq(16).all() and codes[1, :4].lt(16).all()  # 1000 samples: 4 code frames, then pad
    # precomputed codes in the batch (B, frames, n_q) are used instead, padded past their length
    given = {
        **batch,
        "codes": torch.tensor([[[3, 9]] * 12, [[5, 1]] * 12]),
        "codes_lens": torch.tensor([12, 2]),
    }
    from_batch = conditioner.inputs_from_batch(given, samples=3200)
    assert from_batch[0].tolist() == [3] * 10 and from_batch[1].tolist() == [5, 5] + [16] * 8
    cond = conditioner.condition(from_batch, frames=13, hop_length=256)
    assert cond.frames.shape == (2, 13, 8) and cond.tokens is None
    conditioner.train()
    assert not conditioner.codec.training


def test_tokens_to_mel_model_trains_on_codes(tiny_codec_checkpoint):
    from experiments.core.checkpoints import load_submodule

    codec = load_submodule("codec", ckpt_path=str(tiny_codec_checkpoint))
    torch.manual_seed(0)
    model = TextToAudio(
        representation=MelRepresentation(n_mels=16, n_fft=256, hop_length=128, seconds=0.25),
        conditioner=CodeConditioner(codec=codec, d_model=16),
        generator=lambda **sizes: DiT(
            **sizes, d_model=32, num_layers=1, num_heads=2, token_conditioning=False, frame_conditioning=True
        ),
    )
    perturb_(model.generator)  # off the zero output layer, so gradients reach the condition
    batch = {"audio": torch.randn(2, 1, 4000) * 0.1, "audio_lens": torch.tensor([4000, 3000])}
    codes = model.conditioning_inputs(batch)
    assert codes.shape == (2, 13)  # ceil(4000 / 320)
    x0, mask = model.encode(batch["audio"], batch["audio_lens"])
    cond = model.condition(codes)
    assert cond.frames.shape == (2, model.representation.frames, 16)
    model.errors(
        x0, cond, torch.randn_like(x0), torch.rand(2), mask, torch.tensor([True, False])
    ).mean().backward()
    assert model.generator.null_frame.grad.any() and model.conditioner.embedding.weight.grad.any()
    assert model.generate(codes, [1, 2], steps=2).shape == (2, 1, 4000)


# ---------------------------------------------------------------- text encoders


def test_char_encoder_masks_padding_and_keeps_an_empty_caption():
    encoder = CharTextEncoder(d_model=16, num_layers=1, num_heads=2, ffn_dim=32).eval()
    states, mask = encoder(["ab", "", "abc!"])
    assert states.shape == (3, 5, 16) and mask.sum(1).tolist() == [3, 1, 5]
    assert not states[~mask].any()
    alone, _ = encoder(["ab"])
    torch.testing.assert_close(states[0, :3], alone[0], atol=1e-5, rtol=1e-4)  # padding does not leak


def test_pretrained_text_encoder_loads_a_saved_tiny_directory(tmp_path):
    from transformers import BertConfig, BertModel

    from research.acllm.text_lm import train_tokenizer

    tokenizer = train_tokenizer(CAPTIONS, vocab_size=300)
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    encoder = PretrainedTextEncoder.from_pretrained(tmp_path, out_dim=16)
    states, mask = encoder(CAPTIONS[:2])
    assert states.shape[0] == 2 and states.shape[2] == 16 and mask.shape == states.shape[:2]
    assert encoder.out_dim == 16 and not any(p.requires_grad for p in encoder.model.parameters())
    assert all(p.requires_grad for p in encoder.projection.parameters())
    encoder.train()
    assert not encoder.model.training and encoder.projection.training
    # it conditions a generator like the character encoder does
    model = TextToAudio(
        representation=MelRepresentation(n_mels=16, n_fft=256, hop_length=128, seconds=0.25),
        conditioner=encoder,
        generator=lambda **sizes: DiT(**sizes, d_model=32, num_layers=1, num_heads=2),
    )
    assert model.generate(CAPTIONS[:2], [1, 2], steps=2).shape == (2, 1, 4000)


# ---------------------------------------------------------------- the SFT LightningModule


@pytest.fixture(scope="module")
def caption_manifests(mirror, tmp_path_factory) -> dict[str, Path]:
    """Eight FSDD clips of two speakers with captions: train and val manifests."""
    from datamodules.manifest import write_manifest
    from research.audio import audio_info

    folder = tmp_path_factory.mktemp("captions")
    rows = []
    for speaker, accent, digits in (("george", "a Greek", (0, 1, 7)), ("jackson", "an American", (3, 8))):
        for digit in digits:
            for index in (5, 6):
                path = mirror / "fsdd" / "recordings" / f"{digit}_{speaker}_{index}.wav"
                duration, rate, _ = audio_info(path)
                words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
                rows.append(
                    {
                        "id": path.stem,
                        "audio_filepath": str(path),
                        "duration": duration,
                        "sample_rate": rate,
                        "caption": f"{speaker}, a man with {accent} accent, says {words[digit]}",
                    }
                )
    return {
        "train": write_manifest(folder / "train.jsonl", rows),
        "val": write_manifest(folder / "val.jsonl", rows[:4]),
    }


def test_flow_matching_module_trains_and_logs(caption_manifests, tmp_path):
    from datamodules.audio_datamodule import AudioDataModule
    from lit_modules.t2a import FlowMatchingModule
    from tests.conftest import History, quiet_trainer

    L.seed_everything(0)
    data = AudioDataModule(
        train_manifest=str(caption_manifests["train"]),
        val_manifest=str(caption_manifests["val"]),
        view="captions",
        batch_size=5,
        num_buckets=1,
        seed=0,
    )
    net = TextToAudio(
        representation=MelRepresentation(n_mels=32, n_fft=512, hop_length=256, seconds=0.75),
        conditioner=CharTextEncoder(d_model=32, num_layers=1, num_heads=2, ffn_dim=64),
        generator=lambda **sizes: DiT(**sizes, d_model=32, num_layers=2, num_heads=2),
        steps=3,
    )
    from functools import partial

    module = FlowMatchingModule(
        net=net,
        optimizer=partial(torch.optim.AdamW, lr=3e-3),
        scheduler={"warmup_steps": 2},
        log_examples=2,
        example_captions=["george, a man with a Greek accent, says one", "an unseen caption"],
    )
    history = History(("train/loss",))
    trainer = quiet_trainer(
        history,
        max_steps=40,
        val_check_interval=20,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        accelerator="cpu",
        gradient_clip_val=1.0,
    )
    trainer.fit(module, datamodule=data)
    losses = history.values["train/loss"]
    assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-8:]) / 8 < 0.7 * sum(losses[:4]) / 4, losses
    assert "val/loss" in trainer.callback_metrics and math.isfinite(
        float(trainer.callback_metrics["val/loss"])
    )
    # validation is deterministic: the same weights give the same val/loss
    first = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    assert trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"] == pytest.approx(first)
    artifacts = tmp_path / "artifacts"
    wavs = sorted(p.name for p in artifacts.glob("audio/step_*/*.wav"))
    assert {"sample_0.wav", "sample_1.wav", "reference_0.wav"} <= set(wavs)
    assert list(artifacts.glob("figures/step_*/samples_mel.png"))
    # the test pass logs test/loss
    data.test_manifests = {"test": str(caption_manifests["val"])}
    result = trainer.test(module, datamodule=data, verbose=False)[0]
    assert math.isfinite(result["test/loss"])


def test_every_rank_samples_examples_and_only_rank_zero_writes(monkeypatch):
    """Under FSDP a forward needs every rank: example sampling must not be left to rank 0 alone."""
    from types import SimpleNamespace

    import lit_modules.t2a as t2a_module
    from lit_modules.t2a import FlowMatchingModule

    net = tiny_model()
    module = FlowMatchingModule(net=net, optimizer=torch.optim.AdamW, log_examples=2)
    sampled, written = [], []
    for method in ("sample", "encode", "decode"):  # each may run sharded modules
        original = getattr(net, method)
        spy = lambda *a, method=method, original=original, **k: sampled.append(method) or original(*a, **k)  # noqa: E731
        monkeypatch.setattr(net, method, spy)
    for name in ("log_audio", "log_text", "log_figure"):
        monkeypatch.setattr(t2a_module, name, lambda *a, name=name: written.append(name))
    batch = {
        "caption": ["a man says one", "a woman says two"],
        "audio": torch.randn(2, 1, 8000),
        "audio_lens": torch.tensor([8000, 6000]),
    }
    for zero in (False, True):
        trainer = SimpleNamespace(is_global_zero=zero, sanity_checking=False)
        monkeypatch.setattr(FlowMatchingModule, "trainer", trainer)
        module.first_val_batch = batch
        module.on_validation_epoch_end()
    assert sampled == ["sample", "decode", "encode"] * 2  # both ranks sampled and encoded the reference
    assert written.count("log_audio") == 3 and "log_figure" in written  # rank 0 alone: 2 samples + reference


def test_flow_digits_trains_through_the_runner_and_reloads_as_a_submodule(mirror, tmp_path):
    """experiment=t2a/flow_digits end to end (tiny): prepared captions, fit, test, a checkpoint from which the
    CRPO stage rebuilds the model (`load_submodule(key="net")`) with the trained weights."""
    from experiments.core.checkpoints import load_checkpoint, load_submodule
    from experiments.core.compose import compose_config
    from experiments.core.runner import train

    out = tmp_path / "run"
    cfg = compose_config(
        [
            "experiment=t2a/flow_digits",
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.output_dir={out}",
            f"paths.runs_dir={tmp_path / 'runs'}",
            f"paths.mirror_dir={mirror}",
            "logger=none",
            *TINY_T2A,
            "model.net.steps=2",
            "model.log_examples=1",
            "data.batch_size=4",
            "data.num_workers=0",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "trainer.log_every_n_steps=1",
            "callbacks.progress_bar.refresh_rate=0",
        ]
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["val/loss"]) and math.isfinite(metrics["test/loss"])
    assert math.isfinite(metrics["test_seen/loss"])
    ckpt = out / "checkpoints" / "last.ckpt"
    net = load_submodule("net", ckpt_path=str(ckpt))
    assert isinstance(net, TextToAudio) and not net.training
    state = load_checkpoint(ckpt)["state_dict"]
    torch.testing.assert_close(net.generator.output.weight, state["net.generator.output.weight"])
    assert net.generate(CAPTIONS[:1], [3], steps=2).shape == (1, 1, 16000)
    assert list((out / "artifacts").glob("audio/step_*/sample_0.wav"))
