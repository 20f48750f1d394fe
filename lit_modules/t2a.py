"""Rectified-flow text-to-audio, the supervised stage (TangoFlux's pre-training / fine-tuning before CRPO).

Each training step encodes the batch's audio into the fixed-length representation, conditions on its captions
(or, for the token-to-mel decoder, its RVQ-1 codes), and minimises the flow-matching loss at logit-normal times,
with `cond_dropout` of the samples on the null condition (for classifier-free guidance). Validation and test
score the same loss on noise and times fixed per batch (seeded by `val_seed` and the batch index), so the curve
moves only with the weights. At the end of each validation, `log_examples` samples are generated for fixed
inputs (`example_captions`, else the first validation batch's captions / codes) with fixed seeds and logged as
wav files and one figure of their mel spectrograms, the first validation clip's on top for reference.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import matplotlib
import torch
from torch import nn

from lit_modules.artifacts import log_audio, log_figure, log_text
from lit_modules.evaluation import PerTestSetEvaluation
from lit_modules.optim import optimizers_with_schedule
from lit_modules.steps import all_skipped, empty_batch_loss
from research.t2a.model import TextToAudio
from research.t2a.representation import MelRepresentation

matplotlib.use("Agg")


class FlowMatchingModule(PerTestSetEvaluation, L.LightningModule):
    def __init__(
        self,
        *,
        net: TextToAudio,
        optimizer: partial,
        scheduler: dict | None = None,
        val_seed: int = 1234,
        log_examples: int = 4,
        example_captions: list[str] | None = None,
        sample_steps: int | None = None,
        sample_guidance: float | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler = scheduler or {}
        self.val_metrics = self.make_metrics()
        self.test_metrics = nn.ModuleList()
        self.first_val_batch: dict[str, Any] | None = None

    @staticmethod
    def make_metrics() -> nn.ModuleDict:
        return nn.ModuleDict()  # the loss is the metric (logged with its batch size, averaged over the epoch)

    # --- training ---------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if all_skipped(batch):
            return empty_batch_loss(self)
        x0, mask = self.net.encode(batch["audio"], batch["audio_lens"])
        cond = self.net.condition(self.net.conditioning_inputs(batch))
        size = x0.shape[0]
        noise = torch.randn_like(x0)
        t = self.net.sample_times(size, device=self.device)
        drop = self.net.drop_mask(size, device=self.device)
        loss = self.net.errors(x0, cond, noise, t, mask, drop).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    # --- evaluation -------------------------------------------------------------------------------------------
    def fixed_noise_and_times(self, x0: torch.Tensor, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The same noise and times for batch `batch_idx` at every validation (CPU generator, then moved)."""
        generator = torch.Generator().manual_seed(self.hparams.val_seed + batch_idx)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        return noise, self.net.sample_times(x0.shape[0], generator, device=x0.device)

    def evaluate(self, batch: dict, metrics: nn.ModuleDict, prefix: str, batch_idx: int = 0) -> None:
        x0, mask = self.net.encode(batch["audio"], batch["audio_lens"])
        cond = self.net.condition(self.net.conditioning_inputs(batch))
        noise, t = self.fixed_noise_and_times(x0, batch_idx)
        loss = self.net.errors(x0, cond, noise, t, mask).mean()
        self.log(
            f"{prefix}/loss",
            loss,
            batch_size=x0.shape[0],
            sync_dist=True,
            prog_bar=True,
            add_dataloader_idx=False,
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if all_skipped(batch):
            return
        self.evaluate(batch, self.val_metrics, "val", batch_idx)
        if self.first_val_batch is None:
            self.first_val_batch = batch

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not all_skipped(batch):
            self.evaluate(
                batch, self.test_metrics[dataloader_idx], self.test_prefix(dataloader_idx), batch_idx
            )

    def on_validation_epoch_end(self) -> None:
        # every rank samples (under FSDP each forward gathers the shards from all ranks); only rank 0 writes
        if self.first_val_batch is not None and not self.trainer.sanity_checking:
            self.log_examples(self.first_val_batch)
        self.first_val_batch = None

    # --- examples ---------------------------------------------------------------------------------------------
    @staticmethod
    def labels(batch: dict) -> list[str]:
        names = batch.get("caption") or batch.get("id") or [f"item {i}" for i in range(len(batch["audio"]))]
        return [str(name) for name in names]

    def example_inputs(self, batch: dict) -> tuple[list[str] | torch.Tensor, list[str]]:
        """What the examples are generated from, and a label for each."""
        count = self.hparams.log_examples
        if self.hparams.example_captions:
            captions = list(self.hparams.example_captions)[:count]
            return captions, captions
        inputs = self.net.conditioning_inputs(batch)[:count]
        return inputs, self.labels(batch)[: len(inputs)]

    @torch.no_grad()
    def log_examples(self, batch: dict) -> None:
        if self.hparams.log_examples <= 0:
            return
        inputs, labels = self.example_inputs(batch)
        seeds = [self.hparams.val_seed + i for i in range(len(labels))]
        x = self.net.sample(inputs, seeds, self.hparams.sample_steps, self.hparams.sample_guidance)
        audio = self.net.decode(x)
        reference, _ = self.net.encode(batch["audio"][:1], batch["audio_lens"][:1])
        latent = not isinstance(self.net.representation, MelRepresentation)
        reference_audio = self.net.decode(reference) if latent else None
        if not self.trainer.is_global_zero:
            return
        rate = self.net.sample_rate
        for i, wave in enumerate(audio):
            log_audio(self.trainer, f"sample_{i}", wave, rate)
        log_text(
            self.trainer,
            "samples",
            "\n".join(
                f"sample_{i}\tseed {s}\t{label}"
                for i, (s, label) in enumerate(zip(seeds, labels, strict=True))
            ),
        )
        log_audio(self.trainer, "reference_0", batch["audio"][0, :, : batch["audio_lens"][0]], rate)
        if latent:  # show what the decoder makes of them
            display = MelRepresentation(sample_rate=rate, seconds=audio.shape[-1] / rate).to(x.device)
            x, reference = display.encode(audio)[0], display.encode(reference_audio)[0]
        titles = [f"seed {seed}: {label}" for seed, label in zip(seeds, labels, strict=True)]
        figure = self.mel_figure([reference[0], *x], [f"reference: {self.labels(batch)[0]}", *titles])
        log_figure(self.trainer, "samples_mel", figure)

    @staticmethod
    def mel_figure(mels: list[torch.Tensor], titles: list[str]):
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(len(mels), 1, figsize=(8, 1.8 * len(mels)), squeeze=False)
        low, high = (
            float(mels[0].min()),
            float(mels[0].max()),
        )  # one colour scale: the first (reference) one's
        for axis, mel, title in zip(axes[:, 0], mels, titles, strict=True):
            image = mel.float().cpu().numpy()
            axis.imshow(image, aspect="auto", origin="lower", cmap="magma", vmin=low, vmax=high)
            axis.set_title(title, fontsize=8)
            axis.set_ylabel("mel")
        axes[-1, 0].set_xlabel("frame")
        figure.tight_layout()
        return figure

    # --- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(trainable)
        return optimizers_with_schedule(optimizer, self.scheduler, self.trainer.estimated_stepping_batches)
