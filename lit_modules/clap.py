"""Training the CLAP reward model (research/rl/clap.py) on a captions view: symmetric InfoNCE with in-batch
negatives, captions repeated within a batch masked out of the negatives (`clap_loss`).

Validation and every test set log top-1 retrieval over the whole evaluated set (`<prefix>/retrieval_*`):
`a2t` classifies each clip among the distinct captions of the set, `t2a` finds for each such caption the most
similar clip of the set, `speaker` and `words` score the audio->text choice by the speaker it names and the words
it says (the digit on FSDD) alone. The `*_all` variants add the training captions to the candidates: with
caption-disjoint splits (fsdd_captions) a model that only memorised its training pairs picks those instead.
`optimized_metric`: `val/retrieval_a2t` (higher is better).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import lightning as L
import torch

from lit_modules.evaluation import test_prefix
from lit_modules.optim import optimizers_with_schedule
from lit_modules.steps import all_skipped, empty_batch_loss
from research.rl.clap import ClapModel, caption_groups, clap_loss, retrieval


@dataclass
class Collected:
    """What an evaluation epoch keeps of each clip of one set."""

    audio: list[torch.Tensor] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    speakers: list[str | None] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)


def per_item(batch: dict, name: str) -> list:
    return list(batch.get(name) or [None] * len(batch["caption"]))


class ClapModule(L.LightningModule):
    def __init__(self, *, model: ClapModel, optimizer: partial, scheduler: dict | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler = scheduler or {}
        self.collected: dict[str, Collected] = {}

    def batch_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE of the batch (its duplicated captions masked out of the negatives) and its audio embeddings."""
        out = self.model(batch["audio"], batch["audio_lens"], batch["caption"])
        logits = out.logit_scale * self.model.similarity(out.audio, out.text)
        return clap_loss(logits, caption_groups(batch["caption"])), out.audio

    # --- training ---------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if all_skipped(batch):
            return empty_batch_loss(self)
        loss, _ = self.batch_loss(batch)
        size = len(batch["caption"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/logit_scale", self.model.logit_scale.detach(), batch_size=size)
        self.log("train/distinct_captions", float(len(set(batch["caption"]))), batch_size=size)
        return loss

    # --- evaluation -------------------------------------------------------------------------------------------
    def collect(self, prefix: str, batch: dict) -> None:
        if all_skipped(batch):
            return
        loss, audio = self.batch_loss(batch)
        size = len(batch["caption"])
        self.log(f"{prefix}/loss", loss, batch_size=size, sync_dist=True, add_dataloader_idx=False)
        kept = self.collected.setdefault(prefix, Collected())
        kept.audio.append(audio.detach().float().cpu())
        kept.captions += batch["caption"]
        kept.speakers += per_item(batch, "speaker")
        kept.texts += per_item(batch, "text")

    def train_captions(self) -> dict[str, tuple[str | None, str | None]]:
        """{caption: (speaker, text)} of the training set, when the datamodule has built it (not in eval-only
        runs)."""
        datasets = getattr(getattr(self.trainer, "datamodule", None), "datasets", None) or {}
        if "train" not in datasets:
            return {}
        return {r["caption"]: (r.get("speaker"), r.get("text")) for r in datasets["train"].manifest.rows}

    def log_retrieval(self, prefix: str) -> None:
        kept = self.collected.pop(prefix, None)
        if kept is None or not kept.captions:
            return
        audio = torch.cat(kept.audio)
        described = {c: (s, t) for c, s, t in zip(kept.captions, kept.speakers, kept.texts, strict=True)}
        candidate_sets = {"": described}
        extra = {c: d for c, d in self.train_captions().items() if c not in described}
        if extra:
            candidate_sets["_all"] = {**described, **extra}
        for suffix, candidates in candidate_sets.items():
            captions = list(candidates)
            with torch.no_grad():
                embeddings = self.model.encode_text(captions).float().cpu()
            result = retrieval(
                audio,
                kept.captions,
                captions,
                embeddings,
                clip_speakers=kept.speakers,
                clip_texts=kept.texts,
                candidate_speakers=[candidates[c][0] for c in captions],
                candidate_texts=[candidates[c][1] for c in captions],
            )
            values = {"a2t": result.a2t, "speaker": result.speaker, "words": result.text}
            if not suffix:
                values["t2a"] = result.t2a
            for name, value in values.items():
                self.log(f"{prefix}/retrieval_{name}{suffix}", float(value), sync_dist=True)
        self.log(f"{prefix}/captions", float(len(described)), sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self.collected.pop("val", None)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.collect("val", batch)

    def on_validation_epoch_end(self) -> None:
        self.log_retrieval("val")

    def on_test_epoch_start(self) -> None:
        self.collected = {}

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.collect(test_prefix(self, dataloader_idx), batch)

    def on_test_epoch_end(self) -> None:
        for prefix in list(self.collected):
            self.log_retrieval(prefix)

    # --- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        scale = self.model.log_logit_scale
        others = [p for p in self.parameters() if p is not scale and p.requires_grad]
        optimizer = self.optimizer_factory(others)
        # as CLIP: no weight decay on the temperature
        optimizer.add_param_group({"params": [scale], "weight_decay": 0.0})
        return optimizers_with_schedule(optimizer, self.scheduler, self.trainer.estimated_stepping_batches)
