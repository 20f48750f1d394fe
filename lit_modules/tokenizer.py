"""SpeechTokenizer training: GAN with manual optimization (generator = codec, discriminator = MPD + MSD + MS-STFT),
semantic distillation of RVQ-1 from a frozen teacher, and a validation pass that measures what a tokenizer is
for: reconstruction (mel distance, PESQ, STOI, SI-SDR, DNSMOS), what RVQ-1 keeps of the speaker (resemblyzer
similarity of RVQ-1-only resynthesis), codebook health and bitrate, with audio and mel figures as artifacts.

Step counting: Lightning counts every optimizer step in manual optimization, so `trainer.max_steps` counts
generator and discriminator steps together; `train/generator_steps` is the generator's own count.
"""

from __future__ import annotations

from functools import partial

import lightning as L
import matplotlib
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.audio import (
    ScaleInvariantSignalDistortionRatio,
    ShortTimeObjectiveIntelligibility,
)

from lit_modules.artifacts import log_audio, log_figure
from lit_modules.checkpointing import drop_frozen, restore_dropped
from lit_modules.evaluation import PerTestSetEvaluation
from lit_modules.steps import all_skipped, any_rank_all_skipped
from research.metrics import DNSMOS, CodebookUsage, SpeakerSimilarity, pesq_score
from research.tokenizer.codec import CodecOutput, SpeechTokenizerCodec, detach_weight_norm_, swap_first_level
from research.tokenizer.discriminators import CodecDiscriminator
from research.tokenizer.distillation import DISTILLATION_LOSSES, align_to_frames
from research.tokenizer.losses import (
    MultiScaleMelLoss,
    feature_matching_loss,
    group_by_length,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    masked_l1,
    per_item_mean,
)
from research.tokenizer.teachers import FrozenTeacher

matplotlib.use("Agg")

DEFAULT_WEIGHTS = {
    "mel": 1.0,  # the four mel scales carry their own weights (45, 1, 1, 1) in MultiScaleMelLoss
    "waveform": 500.0,
    "adversarial": 1.0,
    "feature": 2.0,
    "commitment": 10.0,
    "distillation": 120.0,
}


class SpeechTokenizerModule(PerTestSetEvaluation, L.LightningModule):
    def __init__(
        self,
        *,
        codec: SpeechTokenizerCodec,
        discriminator: CodecDiscriminator | None = None,
        teacher: FrozenTeacher | None = None,
        generator_optimizer: partial,
        discriminator_optimizer: partial | None = None,
        scheduler: partial | None = None,
        scheduler_interval: str = "epoch",
        loss_weights: dict[str, float] | None = None,
        mel_loss: MultiScaleMelLoss | None = None,
        distillation_loss: str = "d_axis",
        adversarial_start_step: int = 0,
        gradient_clip: float | None = None,
        quality_clips: int = 32,
        log_examples: int = 2,
    ):
        super().__init__()
        self.save_hyperparameters(
            ignore=[
                "codec",
                "discriminator",
                "teacher",
                "mel_loss",
                "generator_optimizer",
                "discriminator_optimizer",
                "scheduler",
            ]
        )
        self.automatic_optimization = False
        self.factories = {"generator": generator_optimizer, "discriminator": discriminator_optimizer}
        self.scheduler_factory = scheduler
        self.weights = {**DEFAULT_WEIGHTS, **(loss_weights or {})}
        if distillation_loss not in DISTILLATION_LOSSES:
            raise ValueError(f"distillation_loss must be one of {sorted(DISTILLATION_LOSSES)}")
        if self.weights["distillation"] > 0 and teacher is None:
            raise ValueError("a distillation weight > 0 needs a teacher (or set loss_weights.distillation=0)")
        projection = codec.semantic_projection
        if (
            teacher is not None
            and isinstance(projection, nn.Linear)
            and projection.out_features != teacher.dim
        ):
            raise ValueError(
                f"the codec projects RVQ-1 to {projection.out_features} dims but the teacher's features have "
                f"{teacher.dim}: set model.codec.semantic_dim={teacher.dim}"
            )
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError("scheduler_interval must be 'epoch' or 'step'")
        self.codec = codec
        self.discriminator = discriminator
        self.teacher = teacher
        self.mel_loss = mel_loss or MultiScaleMelLoss(sample_rate=codec.sample_rate)
        self.distill = DISTILLATION_LOSSES[distillation_loss]
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))
        self.val_metrics = self.make_metrics()
        self.test_metrics = nn.ModuleList()
        self.examples: dict | None = None

    def __getstate__(self) -> dict:
        detach_weight_norm_(self)  # spawned DDP workers receive the module pickled
        return super().__getstate__()

    def setup(self, stage: str) -> None:
        # Two backward passes per step (discriminator, generator) each leave parameters unused, which DDP rejects
        # unless told; set it here so every DDP preset works (runs before the strategy wraps the model).
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy):
            strategy._ddp_kwargs["find_unused_parameters"] = True

    @property
    def adversarial(self) -> bool:
        """Whether this step trains the discriminator and adds adversarial + feature losses (after warm-up)."""
        return (
            self.discriminator is not None
            and int(self.generator_steps) >= self.hparams.adversarial_start_step
        )

    # --- losses -----------------------------------------------------------------------------------------------
    # Padded batches: every loss but commitment is the mean over items of the item's loss on its valid samples
    # (frames), so a zero-padded batch gives the same losses as its items one by one, whatever the padding holds.
    def distillation_loss(self, batch: dict, output: CodecOutput) -> torch.Tensor:
        if self.teacher is None or self.weights["distillation"] == 0:
            return output.semantic.new_zeros(())
        features, teacher_lens = self.teacher.features_with_lens(batch)
        student = output.semantic.float()
        features = features.to(student)
        frames = self.codec.frames(batch["audio_lens"].to(student.device)).clamp(1, student.shape[1])
        teacher_lens = teacher_lens.to(student.device).clamp(1, features.shape[1])
        total = student.new_zeros(())
        for index, (length, teacher_length) in group_by_length(frames, teacher_lens):
            target = align_to_frames(features[index, :teacher_length], length)
            total = total + self.distill(student[index, :length], target) * len(index)
        return total / len(frames)

    def discriminator_loss(self, batch: dict, fake: torch.Tensor) -> torch.Tensor:
        """The discriminator's LSGAN loss, real vs `fake` audio (B, 1, T), on each item's valid samples."""

        def loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
            return lsgan_discriminator_loss(self.discriminator(real), self.discriminator(fake))

        return self.per_item(loss, batch, fake)

    def adversarial_losses(self, batch: dict, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The generator's adversarial and feature-matching losses on each item's valid samples."""

        def loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():  # real feature maps are only targets
                real_maps = self.discriminator(real)
            fake_maps = self.discriminator(fake)
            return torch.stack([lsgan_generator_loss(fake_maps), feature_matching_loss(real_maps, fake_maps)])

        adversarial, feature = self.per_item(loss, batch, fake)
        return adversarial, feature

    def per_item(self, loss, batch: dict, fake: torch.Tensor) -> torch.Tensor:
        return per_item_mean(
            loss, batch["audio_lens"], batch["audio"], fake, min_samples=self.discriminator.min_samples
        )

    def generator_losses(self, batch: dict, output: CodecOutput) -> dict[str, torch.Tensor]:
        audio, fake, lens = batch["audio"], output.audio, batch["audio_lens"]
        losses = {
            "mel": self.mel_loss(fake, audio, lens),
            "waveform": masked_l1(fake, audio, lens),
            "commitment": output.commitment_loss,  # over every frame, padding included
            "distillation": self.distillation_loss(batch, output),
        }
        if self.adversarial:
            losses["adversarial"], losses["feature"] = self.adversarial_losses(batch, fake)
        losses["total"] = sum(self.weights[name] * value for name, value in losses.items())
        return losses

    # --- training ---------------------------------------------------------------------------------------------
    def optimizer_step_(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.hparams.gradient_clip:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.hparams.gradient_clip, gradient_clip_algorithm="norm"
            )
        optimizer.step()

    def training_step(self, batch: dict, batch_idx: int) -> None:
        optimizers = self.optimizers()
        generator_opt, discriminator_opt = optimizers if isinstance(optimizers, list) else (optimizers, None)
        if any_rank_all_skipped(batch, self.device):  # every rank leaves this step out together
            return
        output = self.codec(batch["audio"])
        size = batch["audio"].shape[0]
        if self.adversarial:
            discriminator_loss = self.discriminator_loss(batch, output.audio.detach())
            self.optimizer_step_(discriminator_opt, discriminator_loss)
            self.log("train/discriminator", discriminator_loss, batch_size=size)
        losses = self.generator_losses(batch, output)
        self.optimizer_step_(generator_opt, losses["total"])
        self.after_generator_step()
        self.log("train/generator", losses.pop("total"), prog_bar=True, batch_size=size)
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=size)
        self.log("train/generator_steps", self.generator_steps.float(), batch_size=size)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        drop_frozen(checkpoint, self, "teacher.")  # rebuilt from the teacher's own source

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_dropped(checkpoint, self, "teacher.")

    def after_generator_step(self) -> None:
        self.generator_steps += 1
        if self.hparams.scheduler_interval == "step":
            self.step_schedulers()

    def step_schedulers(self) -> None:
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            scheduler.step()

    def on_train_epoch_end(self) -> None:
        if self.hparams.scheduler_interval == "epoch":
            self.step_schedulers()

    # --- evaluation -------------------------------------------------------------------------------------------
    def make_metrics(self) -> nn.ModuleDict:
        rate = self.codec.sample_rate
        return nn.ModuleDict(
            {
                "mel_distance": MeanMetric(),
                "si_sdr": ScaleInvariantSignalDistortionRatio(),
                "pesq": MeanMetric(),
                "stoi": ShortTimeObjectiveIntelligibility(rate),
                "dnsmos": DNSMOS(rate),
                "speaker_sim": SpeakerSimilarity(rate),
                "speaker_sim_rvq1": SpeakerSimilarity(rate),
                "codebook": CodebookUsage(self.codec.quantizer.codebook_sizes),
            }
        )

    def update_quality(
        self, metrics: nn.ModuleDict, real: torch.Tensor, full: torch.Tensor, rvq1: torch.Tensor
    ):
        metrics["mel_distance"].update(self.mel_loss.distance(full, real))
        metrics["si_sdr"].update(full.float(), real.float())
        metrics["stoi"].update(full.float(), real.float())
        pesq = pesq_score(full, real, self.codec.sample_rate)
        if pesq is not None:
            metrics["pesq"].update(pesq)
        metrics["dnsmos"].update(full)
        metrics["speaker_sim"].update(full, real)
        metrics["speaker_sim_rvq1"].update(rvq1, real)

    def evaluate(self, batch: dict, metrics: nn.ModuleDict, prefix: str) -> dict:
        audio, lens = batch["audio"], batch["audio_lens"]
        output = self.codec(audio)
        rvq1 = self.codec.decode(output.codes[:1])[..., : audio.shape[-1]]
        frames = self.codec.frames(lens)
        valid = torch.arange(output.codes.shape[-1], device=lens.device)[None, :] < frames[:, None]
        metrics["codebook"].update(output.codes, valid)
        losses = self.generator_losses(batch, output)
        size = audio.shape[0]
        log = {"loss": losses["total"], **{k: losses[k] for k in ("mel", "waveform", "distillation")}}
        self.log_dict(
            {f"{prefix}/{k}": v for k, v in log.items()},
            batch_size=size,
            sync_dist=True,
            add_dataloader_idx=False,
        )
        seen = int(metrics["speaker_sim"].count)
        for i in range(min(size, max(0, self.hparams.quality_clips - seen))):
            n = int(lens[i])
            self.update_quality(metrics, audio[i, 0, :n], output.audio[i, 0, :n], rvq1[i, 0, :n])
        return {"audio": audio, "lens": lens, "full": output.audio, "rvq1": rvq1, "codes": output.codes}

    def log_metrics(self, metrics: nn.ModuleDict, prefix: str) -> None:
        values = {}
        for name, metric in metrics.items():
            if getattr(metric, "count", 1) == 0:  # no clip reached the per-clip metrics
                continue
            result = metric.compute()
            if isinstance(result, dict):
                values.update({f"{prefix}/{name}/{k}": v for k, v in result.items()})
            else:
                values[f"{prefix}/{name}"] = result
            metric.reset()
        values[f"{prefix}/bitrate"] = torch.tensor(self.codec.bitrate)
        self.log_dict(values)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if all_skipped(batch):
            return
        result = self.evaluate(batch, self.val_metrics, "val")
        if batch_idx == 0:
            self.examples = {**result, "ids": batch.get("id")}

    def on_validation_epoch_end(self) -> None:
        self.log_metrics(self.val_metrics, "val")
        if self.examples is not None and not self.trainer.sanity_checking:
            self.log_examples(**self.examples)
        self.examples = None

    def on_test_epoch_end(self) -> None:
        for index, metrics in enumerate(self.test_metrics):
            self.log_metrics(metrics, self.test_prefix(index))

    # --- artifacts --------------------------------------------------------------------------------------------
    def log_examples(self, audio, lens, full, rvq1, codes, ids) -> None:
        rate = self.codec.sample_rate
        for i in range(min(self.hparams.log_examples, audio.shape[0])):
            name, n = (ids[i] if ids else f"clip{i}"), int(lens[i])
            clips = {"original": audio[i, 0, :n], "full": full[i, 0, :n], "rvq1": rvq1[i, 0, :n]}
            for kind, wave in clips.items():
                log_audio(self.trainer, f"{name}_{kind}", wave, rate)
            log_figure(self.trainer, f"{name}_mels", self.mel_figure(clips, name))
        if audio.shape[0] >= 2:  # voice conversion: content (RVQ-1) of clip 0, RVQ-2..n of clip 1
            converted = self.codec.decode(swap_first_level(codes[:, :1], codes[:, 1:2]))
            log_audio(self.trainer, "vc_content0_voice1", converted[0, 0, : int(lens[0])], rate)

    def mel_figure(self, clips: dict[str, torch.Tensor], title: str):
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(len(clips), 1, figsize=(9, 2.2 * len(clips)), sharex=True)
        for axis, (kind, wave) in zip(axes, clips.items(), strict=True):
            mel = self.mel_loss.log_mel(0, wave.reshape(1, -1))[0]
            axis.imshow(mel.float().cpu().numpy(), aspect="auto", origin="lower", cmap="magma")
            axis.set_ylabel(kind)
        axes[0].set_title(title)
        axes[-1].set_xlabel("frame (16 ms hop)" if self.codec.sample_rate == 16000 else "frame")
        figure.tight_layout()
        return figure

    # --- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizers = [self.factories["generator"](self.codec.parameters())]
        if self.discriminator is not None:
            if self.factories["discriminator"] is None:
                raise ValueError("a discriminator needs discriminator_optimizer")
            optimizers.append(self.factories["discriminator"](self.discriminator.parameters()))
        if self.scheduler_factory is None:
            return optimizers
        return optimizers, [self.scheduler_factory(optimizer) for optimizer in optimizers]
