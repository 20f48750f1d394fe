"""The audio-conditioned LLM's SFT stage: a SpeechLLM trained on (audio, transcript) pairs with a recipe of
trainable parts (converter only, Seed-ASR's encoder + converter, LoRA, full), validated by decoding with the
same prompt template (WER/CER, on every test set too). Trainable and total parameters per part are logged when
training starts. Items that cannot train (empty transcript, too long for the LLM's context or the encoder) are
named in a warning and counted (`train/skipped`, `val/skipped`), never fatal. A LoRA run ends by exporting its
adapter (peft directory) and the merged LLM beside its checkpoints and to MLflow (`acllm/adapter`,
`acllm/merged`)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torchmetrics.text import CharErrorRate, WordErrorRate

from lit_modules.artifacts import log_artifact_folder
from lit_modules.checkpointing import drop_frozen, restore_dropped
from lit_modules.evaluation import PerTestSetEvaluation
from lit_modules.optim import optimizers_with_schedule
from lit_modules.steps import all_skipped, empty_batch_loss, select_items
from research.acllm.speech_llm import SpeechLLM
from research.acllm.trainable import apply_lora, load_adapter, save_adapter, set_trainable
from research.text import CharVocabulary

log = logging.getLogger(__name__)


class AcLLMModule(PerTestSetEvaluation, L.LightningModule):
    def __init__(
        self,
        *,
        model: SpeechLLM,
        optimizer: partial,
        scheduler: dict | None = None,
        recipe: str | list[str] = "lora",
        lora: dict | None = None,
        adapter_dir: str | None = None,
        converter_first_steps: int = 0,
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
        if adapter_dir is not None:
            if lora is None:
                raise ValueError("adapter_dir needs the lora recipe (an adapter to continue training)")
            load_adapter(model, adapter_dir)
        elif lora is not None:  # a unit model's new token rows train beside the adapters
            apply_lora(model, **lora, trainable_tokens=getattr(model, "unit_token_ids", None))
        self.parameter_counts = set_trainable(model, recipe)
        self.optimizer_factory = optimizer
        self.scheduler = scheduler or {}
        self.val_metrics = self.make_metrics()
        self.test_metrics = nn.ModuleList()
        self.normalize = CharVocabulary().normalize
        self.skipped_in_training = 0

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

    def on_before_optimizer_step(self, optimizer) -> None:
        # SLAM-LLM's advice, converter first: until converter_first_steps nothing else moves (AdamW skips a
        # parameter without a gradient, moments included)
        if self.global_step < self.hparams.converter_first_steps:
            for name, parameter in self.model.named_parameters():
                if not name.startswith("converter."):
                    parameter.grad = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        drop_frozen(checkpoint, self, "model.llm.")  # a frozen LLM is rebuilt from its directory
        checkpoint["voxlab_llm"] = {"dir": self.model.llm_dir, "digest": self.model.llm_digest}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        trained_on = checkpoint.get("voxlab_llm")
        if trained_on and trained_on["digest"] != self.model.llm_digest:
            raise ValueError(
                f"this checkpoint was trained on the LLM in {trained_on['dir']}; the directory "
                f"{self.model.llm_dir} now holds a different model (its frozen weights and tokenizer would be "
                "read from there)"
            )
        restore_dropped(checkpoint, self, "model.llm.")

    def on_fit_end(self) -> None:
        if self.hparams.lora is None or not self.trainer.is_global_zero:
            return
        if "FSDP" in type(self.trainer.strategy).__name__:  # rank 0 holds a shard only
            log.warning(
                "no adapter export under FSDP: load the checkpoint on one device and use save_adapter"
            )
            return
        exported = save_adapter(self.model, Path(self.trainer.default_root_dir) / "export")
        for folder in exported.values():
            log_artifact_folder(self.trainer, folder, "acllm")
        log.info("adapter and merged LLM written to %s", exported["adapter"].parent)

    def usable_loss(self, batch: dict) -> tuple[torch.Tensor | None, list[int], tuple[torch.Tensor, ...]]:
        """Teacher-forced loss over the items that can train, their indices and speech embeddings (B, L, d),
        lengths; the others are named in a warning. Empty transcripts and over-long audio are left out before
        encoding, items over the LLM's context after it."""
        size = len(batch["text"])
        seconds = (batch["audio_lens"] / self.hparams.sample_rate).tolist()
        reasons = self.model.unusable_input(batch["text"], seconds)
        kept = [index for index in range(size) if index not in reasons]
        speech = speech_lens = targets = None
        if kept:
            speech, speech_lens = self.model.embed_speech(select_items(batch, kept))
            targets = [self.model.transcript_ids(batch["text"][i]) for i in kept]
            over = self.model.over_context(targets, speech_lens)
            reasons.update({kept[i]: why for i, why in over.items()})
            fits = [i for i in range(len(kept)) if i not in over]
            rows = torch.tensor(fits, dtype=torch.long, device=speech.device)
            speech, speech_lens, targets = speech[rows], speech_lens[rows], [targets[i] for i in fits]
            kept = [kept[i] for i in fits]
        for index, reason in sorted(reasons.items()):
            log.warning("skipping %s: %s", batch.get("id", ["?"] * size)[index], reason)
        if not kept:
            return None, kept, (None, None)
        return self.model.loss(speech, speech_lens, targets), kept, (speech, speech_lens)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, kept, _ = (None, [], None) if all_skipped(batch) else self.usable_loss(batch)
        self.skipped_in_training += len(batch["text"]) - len(kept)
        self.log("train/skipped", float(self.skipped_in_training), batch_size=1)
        if loss is None:
            return empty_batch_loss(self)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(kept))
        return loss

    @staticmethod
    def make_metrics() -> nn.ModuleDict:
        return nn.ModuleDict({"wer": WordErrorRate(), "cer": CharErrorRate()})

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if not all_skipped(batch):
            self.evaluate(batch, self.val_metrics, "val")

    def evaluate(self, batch: dict, metrics: nn.ModuleDict, prefix: str) -> None:
        """Teacher-forced loss, then decoding with the training prompt: WER / CER against the transcripts (of
        the items that could be scored; the others are counted in `{prefix}/skipped`)."""
        loss, kept, (speech, speech_lens) = self.usable_loss(batch)
        skipped = float(len(batch["text"]) - len(kept))
        self.log(f"{prefix}/skipped", skipped, batch_size=1, reduce_fx="sum", add_dataloader_idx=False)
        if loss is None:
            return
        size = len(kept)
        self.log(f"{prefix}/loss", loss, batch_size=size, sync_dist=True, add_dataloader_idx=False)
        audio_lens = batch["audio_lens"][torch.tensor(kept, device=speech.device)]
        bound = self.model.max_new_tokens(audio_lens, self.hparams.sample_rate)
        nbest = self.model.decode(
            speech, speech_lens, beams=self.hparams.beams, nbest=1, max_new_tokens=bound
        )  # the speech the loss encoded, not encoded again
        hypotheses = [self.normalize(item[0][0]) for item in nbest]
        references = [self.normalize(batch["text"][i]) for i in kept]
        for name, metric in metrics.items():
            metric.update(hypotheses, references)
            self.log(f"{prefix}/{name}", metric, batch_size=size, add_dataloader_idx=False)

    def configure_optimizers(self) -> dict:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return optimizers_with_schedule(
            self.optimizer_factory(trainable), self.scheduler, self.trainer.estimated_stepping_batches
        )
