"""LUISE pretraining (Seed-ASR; BEST-RQ objective): mask spans of the log-mel input, predict the labels of the masked
40 ms frames with one softmax per codebook.

Iteration 1 takes its labels from a frozen random-projection quantizer of the clean features, computed on the fly;
iteration k+1 reads k-means labels of iteration k's hidden states from the manifest (`label_field`, written by
`python -m experiments.luise labels`); `experiments.luise_pipeline` can start its encoder from iteration k's.
"""

from __future__ import annotations

from functools import partial

import lightning as L
import torch
from torch import nn

from lit_modules.evaluation import test_prefix
from lit_modules.optim import optimizers_with_schedule
from lit_modules.steps import all_skipped, empty_batch_loss
from research.encoder import SUBSAMPLING, ConformerEncoder
from research.features import lengths_to_mask
from research.ssl.masking import MaskedFeatures, frames_fully_masked, span_mask
from research.ssl.targets import (
    MultiSoftmaxHead,
    RandomProjectionQuantizer,
    label_perplexity,
    masked_prediction_loss,
    stack_frames,
)


class LUISEModule(L.LightningModule):
    def __init__(
        self,
        *,
        encoder: ConformerEncoder,
        optimizer: partial,
        quantizer: RandomProjectionQuantizer | None = None,
        label_field: str | None = None,
        num_labels: int | None = None,
        mask_start_prob: float = 0.01,
        mask_span: int = 40,
        mask_fill: str = "noise",
        scheduler: dict | None = None,
        validation_seed: int = 1234,
    ):
        super().__init__()
        if (quantizer is None) == (label_field is None):
            raise ValueError("give exactly one target source: a random-projection quantizer or a label_field")
        if label_field is not None and not num_labels:
            raise ValueError("label_field needs num_labels (the k of the k-means that wrote them)")
        if (
            quantizer is not None
            and quantizer.projection.shape[1] != SUBSAMPLING * encoder.features.mel.n_mels
        ):
            raise ValueError(
                f"quantizer input_dim must be {SUBSAMPLING} x n_mels = {SUBSAMPLING * encoder.features.mel.n_mels}"
            )
        self.save_hyperparameters(ignore=["encoder", "optimizer", "quantizer"])
        self.encoder = encoder
        self.quantizer = quantizer
        num_codebooks, codebook_size = (
            (quantizer.num_codebooks, quantizer.codebook_size) if quantizer is not None else (1, num_labels)
        )
        self.codebook_size = codebook_size
        self.head = MultiSoftmaxHead(
            encoder.d_model, num_codebooks=num_codebooks, codebook_size=codebook_size
        )
        self.masking = MaskedFeatures(encoder.features.mel.n_mels, fill=mask_fill)
        self.optimizer_factory = optimizer
        self.scheduler = scheduler or {}

    # --- targets and masks ------------------------------------------------------------------------------------
    def labels(self, batch: dict, feats: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels (B, frames, codebooks) and the (B,) number of frames that have one."""
        if self.quantizer is not None:
            lens = torch.full((feats.shape[0],), frames, device=feats.device)
            return self.quantizer(stack_frames(feats, SUBSAMPLING))[:, :frames], lens
        field = self.hparams.label_field
        if field not in batch:
            raise KeyError(
                f"batch has no '{field}': add it to data.array_fields (labels written by `python -m experiments.luise labels`)"
            )
        labels = batch[field].long()[:, :frames]
        labels = nn.functional.pad(labels, (0, frames - labels.shape[1]))
        return labels[..., None], batch[f"{field}_lens"].clamp_max(frames)

    def masked_step(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        # Masks (and noise fill) are drawn per item from this rank's RNG: rank-local by design, as each rank masks
        # its own utterances. Only the targets must agree across ranks, and the quantizer draws from its own seed.
        feats, lens = self.encoder.features(batch["audio"], batch["audio_lens"])
        mask = span_mask(
            lens,
            feats.shape[1],
            start_prob=self.hparams.mask_start_prob,
            span=self.hparams.mask_span,
            generator=generator,
        )
        out = self.encoder.encode_features(self.masking(feats, mask), lens)
        frames = out.hidden.shape[1]
        labels, label_lens = self.labels(batch, feats, frames)
        valid = lengths_to_mask(torch.minimum(out.lens, label_lens), frames)
        targets = frames_fully_masked(mask, SUBSAMPLING, frames) & valid
        loss, accuracy = masked_prediction_loss(self.head(out.hidden), labels, targets)
        return {
            "loss": loss,
            "accuracy": accuracy,
            "masked_fraction": targets.sum() / valid.sum().clamp_min(1),
            "label_perplexity": label_perplexity(labels[valid], self.codebook_size),
        }

    # --- steps ------------------------------------------------------------------------------------------------
    def log_step(self, prefix: str, values: dict[str, torch.Tensor], size: int) -> None:
        sync = prefix != "train"
        self.log(
            f"{prefix}/loss",
            values["loss"],
            prog_bar=True,
            batch_size=size,
            sync_dist=sync,
            add_dataloader_idx=False,
        )
        self.log_dict(
            {f"{prefix}/{name}": value for name, value in values.items() if name != "loss"},
            batch_size=size,
            sync_dist=sync,
            add_dataloader_idx=False,  # test sets are told apart by their prefix
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if all_skipped(batch):
            return empty_batch_loss(self)
        values = self.masked_step(batch)
        self.log_step("train", values, batch["audio"].shape[0])
        return values["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.held_out_step(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.held_out_step(batch, batch_idx, test_prefix(self, dataloader_idx))

    def held_out_step(self, batch: dict, batch_idx: int, prefix: str) -> None:
        if all_skipped(batch):
            return
        # the same masks at every validation, so the curves compare
        generator = torch.Generator().manual_seed(self.hparams.validation_seed + batch_idx)
        self.log_step(prefix, self.masked_step(batch, generator), batch["audio"].shape[0])

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(self.parameters())
        return optimizers_with_schedule(optimizer, self.scheduler, self.trainer.estimated_stepping_batches)
