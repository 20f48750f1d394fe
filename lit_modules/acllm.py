"""The audio-conditioned LLM's SFT stage: a SpeechLLM trained on (audio, transcript) pairs with a recipe of
trainable parts (converter only, Seed-ASR's encoder + converter, LoRA, full), validated by decoding with the
same prompt template (WER/CER, on every test set too). Trainable and total parameters per part are logged when
training starts."""

from __future__ import annotations

from functools import partial

import lightning as L
import torch
from torch import nn
from torchmetrics.text import CharErrorRate, WordErrorRate

from lit_modules.checkpointing import drop_frozen, restore_dropped
from lit_modules.evaluation import PerTestSetEvaluation
from lit_modules.optim import optimizers_with_schedule
from lit_modules.steps import all_skipped, empty_batch_loss
from research.acllm.speech_llm import SpeechLLM
from research.acllm.trainable import apply_lora, set_trainable
from research.text import CharVocabulary


class AcLLMModule(PerTestSetEvaluation, L.LightningModule):
    def __init__(
        self,
        *,
        model: SpeechLLM,
        optimizer: partial,
        scheduler: dict | None = None,
        recipe: str | list[str] = "lora",
        lora: dict | None = None,
        beams: int = 1,
        sample_rate: int = 16000,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.model = model
        if (recipe == "lora") != (lora is not None) and isinstance(recipe, str):
            raise ValueError(
                f"recipe {recipe!r} with lora={lora!r}: the lora recipe needs LoRA settings, the other recipes none "
                "(set model.lora=null)"
            )
        if lora is not None:
            apply_lora(model, **lora)
        self.parameter_counts = set_trainable(model, recipe)
        self.optimizer_factory = optimizer
        self.scheduler = scheduler or {}
        self.val_metrics = self.make_metrics()
        self.test_metrics = nn.ModuleList()
        self.normalize = CharVocabulary().normalize

    def on_train_epoch_start(self) -> None:
        # a part with nothing to train runs as at inference (no dropout, no SpecAugment); Lightning leaves modes
        for part, count in self.parameter_counts.items():
            getattr(self.model, part).train(count["trainable"] > 0)

    def on_train_start(self) -> None:
        counts = {
            f"params/{part}/{kind}": float(value)
            for part, count in self.parameter_counts.items()
            for kind, value in count.items()
        }
        for logger in self.loggers:
            logger.log_metrics(counts, step=self.global_step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        drop_frozen(checkpoint, self, "model.llm.")  # a frozen LLM is rebuilt from its directory

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_dropped(checkpoint, self, "model.llm.")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if all_skipped(batch):
            return empty_batch_loss(self)
        loss = self.model(batch["audio"], batch["audio_lens"], batch["text"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["text"]))
        return loss

    @staticmethod
    def make_metrics() -> nn.ModuleDict:
        return nn.ModuleDict({"wer": WordErrorRate(), "cer": CharErrorRate()})

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if not all_skipped(batch):
            self.evaluate(batch, self.val_metrics, "val")

    def evaluate(self, batch: dict, metrics: nn.ModuleDict, prefix: str) -> None:
        """Teacher-forced loss, then decoding with the training prompt: WER / CER against the transcripts."""
        size = len(batch["text"])
        loss = self.model(batch["audio"], batch["audio_lens"], batch["text"])
        self.log(f"{prefix}/loss", loss, batch_size=size, sync_dist=True, add_dataloader_idx=False)
        nbest = self.model.transcribe(
            batch["audio"],
            batch["audio_lens"],
            sample_rate=self.hparams.sample_rate,
            beams=self.hparams.beams,
        )
        hypotheses = [self.normalize(item[0][0]) for item in nbest]
        references = [self.normalize(text) for text in batch["text"]]
        for name, metric in metrics.items():
            metric.update(hypotheses, references)
            self.log(f"{prefix}/{name}", metric, batch_size=size, add_dataloader_idx=False)

    def configure_optimizers(self) -> dict:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return optimizers_with_schedule(
            self.optimizer_factory(trainable), self.scheduler, self.trainer.estimated_stepping_batches
        )
