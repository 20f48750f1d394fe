"""SpeechTokenizer training: the LightningModule on real FSDD speech, and a tiny run through experiments.train."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from mlflow.tracking import MlflowClient

from lit_modules.tokenizer import SpeechTokenizerModule
from research.encoder import ConformerEncoder
from research.tokenizer.codec import SpeechTokenizerCodec
from research.tokenizer.discriminators import CodecDiscriminator
from research.tokenizer.teachers import EncoderTeacher
from tests.conftest import History, fit_on_batch, run_python_module, tiny_tokenizer_overrides


def tiny_module(**overrides) -> SpeechTokenizerModule:
    torch.manual_seed(0)
    encoder = ConformerEncoder(d_model=16, num_layers=1, num_heads=2, ffn_dim=32, subsampling_channels=4)
    arguments = {
        "codec": SpeechTokenizerCodec(
            n_filters=4,
            dimension=32,
            codebook_sizes=(32, 32, 32),
            semantic_dim=16,
            quantizer={"kmeans_iters": 5},
        ),
        "discriminator": CodecDiscriminator(periods=(), msd_rates=(), stft_filters=4, stft_n_ffts=(512, 256)),
        "teacher": EncoderTeacher(encoder=encoder, layer=1),
        "generator_optimizer": partial(torch.optim.Adam, lr=3e-3, betas=(0.9, 0.99)),
        "discriminator_optimizer": partial(torch.optim.Adam, lr=3e-3, betas=(0.9, 0.99)),
        "quality_clips": 2,
        **overrides,
    }
    return SpeechTokenizerModule(**arguments)


def fit(module, batch, max_steps: int, **trainer_args) -> History:
    return fit_on_batch(
        module, batch, max_steps, ("train/mel", "train/distillation", "train/discriminator"), **trainer_args
    )


def test_generator_losses_fall(speech_batch):
    module = tiny_module(adversarial_start_step=5)
    history = fit(module, speech_batch, max_steps=5 + 2 * 35)
    mel, distillation = history.values["train/mel"], history.values["train/distillation"]
    assert len(mel) == 40 and int(module.generator_steps) == 40
    assert sum(mel[-5:]) / 5 < 0.85 * sum(mel[:5]) / 5  # about -20% in 40 steps on this batch
    assert sum(distillation[-5:]) < sum(distillation[:5])
    assert len(history.values["train/discriminator"]) == 35  # trained only after the 5 warm-up steps


def test_discriminator_is_untouched_during_warm_up(speech_batch):
    module = tiny_module(adversarial_start_step=3)
    before = [p.detach().clone() for p in module.discriminator.parameters()]
    history = fit(module, speech_batch, max_steps=3)
    assert "train/discriminator" not in history.values
    assert all(torch.equal(a, b) for a, b in zip(before, module.discriminator.parameters(), strict=True))


def bf16_step(module: SpeechTokenizerModule, batch: dict, enabled: bool):
    """One generator + discriminator loss evaluation and generator backward, under bf16 autocast if `enabled`
    (what Lightning's precision="bf16-mixed" runs on CPU)."""
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
        output = module.codec(batch["audio"])
        losses = module.generator_losses(batch, output)
        losses["discriminator"] = module.discriminator_loss(batch, output.audio.detach())
    losses["total"].backward()
    grads = torch.cat([p.grad.flatten() for p in module.codec.parameters() if p.grad is not None])
    return output, {name: float(value) for name, value in losses.items()}, grads


def test_bf16_autocast_step_matches_float32_with_the_quantizer_in_float32(speech_batch):
    module = tiny_module(adversarial_start_step=0)
    module.codec(
        speech_batch["audio"]
    )  # k-means initialisation, then eval: both passes see the same codebooks
    module.eval()
    full, full_losses, full_grads = bf16_step(module, speech_batch, enabled=False)
    half, half_losses, half_grads = bf16_step(module, speech_batch, enabled=True)
    assert half.latent.dtype == torch.bfloat16  # the encoder did run in bf16
    # the codes are those float32 distances give for this bf16 latent (bf16 distances change some of them)
    assert torch.equal(half.codes, module.codec.quantizer.encode(half.latent.float()))
    assert half.commitment_loss.dtype == torch.float32
    assert all(math.isfinite(value) for value in half_losses.values())
    # measured: generator terms within 0.06% of float32, the discriminator's within 0.9% (tolerances 1% / 3%);
    # the commitment loss (about 1e-7 after k-means on this batch) is left out
    for name in ("mel", "waveform", "distillation", "adversarial", "feature", "total"):
        assert half_losses[name] == pytest.approx(full_losses[name], rel=0.01), name
    assert half_losses["discriminator"] == pytest.approx(full_losses["discriminator"], rel=0.03)
    assert half_grads.isfinite().all() and half_grads.abs().sum() > 0
    assert (
        float(torch.nn.functional.cosine_similarity(half_grads, full_grads, dim=0)) > 0.99
    )  # measured 0.9999


def test_misconfigured_distillation_is_refused():
    with pytest.raises(ValueError, match="needs a teacher"):
        tiny_module(teacher=None)
    with pytest.raises(ValueError, match="semantic_dim=16"):
        tiny_module(
            codec=SpeechTokenizerCodec(n_filters=4, dimension=32, codebook_sizes=(32,), semantic_dim=8)
        )
    assert tiny_module(teacher=None, loss_weights={"distillation": 0.0}).teacher is None


def test_tiny_run_logs_quality_codebook_and_audio(tiny_tokenizer_run):
    client = MlflowClient(tiny_tokenizer_run["uri"])
    run = client.get_run(tiny_tokenizer_run["run_id"])
    metrics = set(run.data.metrics)
    for prefix in ("val", "test", "test_heldout"):
        expected = {
            "mel_distance",
            "pesq",
            "stoi",
            "si_sdr",
            "dnsmos",
            "speaker_sim",
            "speaker_sim_rvq1",
            "bitrate",
        }
        assert {f"{prefix}/{name}" for name in expected} <= metrics
        assert {f"{prefix}/codebook/level{i}/perplexity" for i in range(1, 5)} <= metrics
    assert run.data.metrics["val/bitrate"] == pytest.approx(50 * 4 * math.log2(64))
    assert 1 <= run.data.metrics["val/codebook/level1/perplexity"] <= 64
    assert {"train/generator", "train/distillation", "train/discriminator"} <= metrics
    assert run.data.tags["voxlab.component"] == "tokenizer"
    step_dirs = client.list_artifacts(run.info.run_id, "audio")
    names = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, step_dirs[-1].path)}
    assert any(n.endswith("_rvq1.wav") for n in names) and "vc_content0_voice1.wav" in names
    assert any(n.endswith("_original.wav") for n in names) and any(n.endswith("_full.wav") for n in names)
    figure_dirs = client.list_artifacts(run.info.run_id, "figures")
    assert figure_dirs and client.list_artifacts(run.info.run_id, figure_dirs[-1].path)


def test_ddp_sim_trains_the_gan_with_two_processes(
    tiny_data_dir, tiny_ctc_checkpoint, tmp_path, mlflow_store
):
    """Spawned workers receive the module pickled (weight-norm tensors) and two backward passes per step need
    DDP's unused-parameter detection: both are handled by the module, whatever DDP preset is chosen."""
    overrides = tiny_tokenizer_overrides(
        tiny_data_dir,
        tmp_path / "run",
        tiny_ctc_checkpoint,
        "trainer=ddp_sim",
        "trainer.max_steps=6",
        "trainer.val_check_interval=2",
        "test=false",
    )
    result = run_python_module("experiments.train", overrides)
    assert "Starting with 2 processes" in result.stdout + result.stderr
    client = MlflowClient(mlflow_store)
    (run,) = client.search_runs([client.get_experiment_by_name("tokenizer_cpu").experiment_id])
    assert {"train/generator", "train/discriminator", "val/mel_distance"} <= set(run.data.metrics)
    assert run.data.params["trainer/devices"] == "2"
