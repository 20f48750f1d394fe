"""CTC speech recognition: training, greedy decoding, WER/CER on validation and every test set.

Also the fine-tuning stage for pretrained encoders (LUISE SFT): `encoder_lr_scale` scales the encoder's learning
rate, `encoder_layer_decay` decays it layer by layer below the top (layer-wise LR decay), `freeze_encoder_steps`
keeps it frozen for the first N optimizer steps and `reset_encoder_layers` re-initialises its top layers;
`scheduler.name=tri_stage` is wav2vec 2.0's warm-up / hold / exponential-decay schedule.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import lightning as L
import matplotlib
import torch
from torch import nn
from torchmetrics.text import CharErrorRate, WordErrorRate

from lit_modules.artifacts import log_audio, log_figure, log_text
from lit_modules.evaluation import PerTestSetEvaluation
from lit_modules.optim import optimizers_with_schedule
from lit_modules.steps import all_skipped, empty_batch_loss
from research.asr.ctc import ConformerCTC
from research.text import ctc_greedy_decode

matplotlib.use("Agg")


class CTCASRModule(PerTestSetEvaluation, L.LightningModule):
    def __init__(
        self,
        *,
        net: ConformerCTC,
        optimizer: partial,
        scheduler: dict | None = None,
        encoder_lr_scale: float = 1.0,
        encoder_layer_decay: float = 1.0,
        freeze_encoder_steps: int = 0,
        reset_encoder_layers: int = 0,
        log_examples: int = 4,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer"])
        self.net = net
        self.net.encoder.reset_top_layers(reset_encoder_layers)
        self.optimizer_factory = optimizer
        self.scheduler = scheduler or {}
        self.val_metrics = self.make_metrics()
        self.test_metrics = nn.ModuleList()
        self.first_val_batch: dict[str, Any] | None = None
        self.skipped_too_short = 0  # training utterances left out of the loss on this rank since (re)start

    @staticmethod
    def make_metrics() -> nn.ModuleDict:
        return nn.ModuleDict({"wer": WordErrorRate(), "cer": CharErrorRate()})

    def forward(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(audio, audio_lens)

    # --- training ---------------------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        frozen = self.global_step < self.hparams.freeze_encoder_steps
        self.net.encoder.requires_grad_(not frozen)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if all_skipped(batch):
            return empty_batch_loss(self)
        log_probs, lens = self(batch["audio"], batch["audio_lens"])
        loss, skipped = self.net.loss_and_skipped(log_probs, lens, batch["text"])
        self.count_too_short(batch, skipped)
        self.log("train/loss", loss, prog_bar=True, batch_size=max(1, int((~skipped).sum())))
        return loss

    def count_too_short(self, batch: dict, skipped: torch.Tensor) -> None:
        """Warns about, and counts in `train/skipped_too_short` (this rank's total), the utterances left out of
        the loss because they have fewer encoder frames than their transcripts need."""
        if skipped.any():
            ids = [batch["id"][i] for i in skipped.nonzero()[:, 0].tolist()] if "id" in batch else []
            self.skipped_too_short += int(skipped.sum())
            warnings.warn(
                f"left {int(skipped.sum())} utterance(s) out of the CTC loss, too short for their transcripts: "
                f"{', '.join(map(str, ids))}",
                stacklevel=2,
            )
        self.log("train/skipped_too_short", float(self.skipped_too_short), batch_size=len(batch["text"]))

    # --- evaluation -------------------------------------------------------------------------------------------
    def evaluate(
        self, batch: dict, metrics: nn.ModuleDict, prefix: str
    ) -> tuple[torch.Tensor, torch.Tensor, list]:
        log_probs, lens = self(batch["audio"], batch["audio_lens"])
        hypotheses = ctc_greedy_decode(log_probs, lens, self.net.vocab)
        references = [self.net.vocab.normalize(t) for t in batch["text"]]
        size = len(references)
        loss, skipped = self.net.loss_and_skipped(log_probs, lens, batch["text"])
        if not skipped.all():
            kept = int((~skipped).sum())
            self.log(f"{prefix}/loss", loss, batch_size=kept, sync_dist=True, add_dataloader_idx=False)
        for name, metric in metrics.items():
            metric.update(hypotheses, references)
            self.log(
                f"{prefix}/{name}", metric, batch_size=size, prog_bar=name == "wer", add_dataloader_idx=False
            )
        return log_probs, lens, hypotheses

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if all_skipped(batch):
            return
        log_probs, lens, hypotheses = self.evaluate(batch, self.val_metrics, "val")
        if batch_idx == 0:
            self.first_val_batch = {"batch": batch, "log_probs": log_probs, "lens": lens, "hyps": hypotheses}

    def on_validation_epoch_end(self) -> None:
        if self.first_val_batch is not None and not self.trainer.sanity_checking:
            self.log_examples(**self.first_val_batch)
        self.first_val_batch = None

    # --- artifacts --------------------------------------------------------------------------------------------
    def log_examples(self, batch: dict, log_probs: torch.Tensor, lens: torch.Tensor, hyps: list[str]) -> None:
        count = min(self.hparams.log_examples, len(hyps))
        if count == 0:
            return
        lines = [f"{batch['id'][i]}\tREF: {batch['text'][i]}\n\tHYP: {hyps[i]}" for i in range(count)]
        log_text(self.trainer, "val_examples", "\n".join(lines))
        sample_rate = self.net.encoder.features.mel.sample_rate
        log_audio(
            self.trainer, f"val_{batch['id'][0]}", batch["audio"][0, :, : batch["audio_lens"][0]], sample_rate
        )
        figure = self.posterior_figure(log_probs[0, : lens[0]], hyps[0], batch["text"][0])
        log_figure(self.trainer, f"val_{batch['id'][0]}_posteriors", figure)

    def posterior_figure(self, log_probs: torch.Tensor, hypothesis: str, reference: str):
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(10, 3.5))
        axis.imshow(log_probs.exp().T.float().cpu().numpy(), aspect="auto", origin="lower", cmap="magma")
        labels = ["<b>", *self.net.vocab.characters.replace(" ", "_")]
        axis.set_yticks(range(len(labels)), labels, fontsize=6)
        axis.set_xlabel(f"frame ({self.net.encoder.frame_rate:.0f} Hz)")
        axis.set_title(f"REF: {reference}\nHYP: {hypothesis}", fontsize=8)
        figure.tight_layout()
        return figure

    # --- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        encoder_params = list(self.net.encoder.parameters())
        encoder_ids = {id(p) for p in encoder_params}
        other_params = [p for p in self.parameters() if id(p) not in encoder_ids]
        optimizer = self.optimizer_factory(other_params)
        base_lr = optimizer.param_groups[0]["lr"] * self.hparams.encoder_lr_scale
        for params, depth_below_top in self.encoder_depths():
            lr = base_lr * self.hparams.encoder_layer_decay**depth_below_top
            optimizer.add_param_group({"params": params, "lr": lr})
        return optimizers_with_schedule(optimizer, self.scheduler, self.trainer.estimated_stepping_batches)

    def encoder_depths(self) -> list[tuple[list[nn.Parameter], int]]:
        """Encoder parameters grouped for layer-wise LR decay (BEiT / data2vec fine-tuning): the top Conformer
        layer at depth 0 below the top, each layer below one more, the subsampling front end last. Without
        decay, one group."""
        encoder = self.net.encoder
        if self.hparams.encoder_layer_decay == 1.0:
            return [(list(encoder.parameters()), 0)]
        layers = list(encoder.conformer.conformer_layers)
        grouped = [(list(layer.parameters()), len(layers) - 1 - index) for index, layer in enumerate(layers)]
        in_layers = {id(p) for params, _ in grouped for p in params}
        front = [p for p in encoder.parameters() if id(p) not in in_layers]
        return [*grouped, (front, len(layers))]
