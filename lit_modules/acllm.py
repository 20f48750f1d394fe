"""The audio-conditioned LLM's SFT stage: a SpeechLLM trained on (audio, transcript) pairs with a recipe of
trainable parts (converter only, Seed-ASR's encoder + converter, LoRA, full), validated by decoding with the
same prompt template (WER/CER, on every test set too). Trainable and total parameters per part are logged when
training starts. Items that cannot train (empty transcript, too long for the LLM's context or the encoder) are
named in a warning and counted (`train/skipped`, `val/skipped`), never fatal. A LoRA run ends by exporting its
adapter (peft directory) and the merged LLM beside its checkpoints and to MLflow (`acllm/adapter`,
`acllm/merged`). Batches with a `context` column (context SFT, `data.context`) put each item's context in the
prompt; validation then also logs keyword recall, decoding with Seed-ASR's joint search when `context_weight` is
set. `init_checkpoint` starts every weight from an earlier AcLLM run (context SFT after SFT, MWER after that)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
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
from research.metrics import KeywordRecall
from research.text import CharVocabulary

log = logging.getLogger(__name__)


@dataclass
class UsableItems:
    """The items of a batch that can train, their speech embeddings, transcript token ids and contexts."""

    kept: list[int]
    speech: torch.Tensor
    speech_lens: torch.Tensor
    targets: list[list[int]]
    contexts: list[str] | None


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
        context_weight: float | None = None,
        prune_top_k: int | None = 5,
        init_checkpoint: dict | None = None,
        sample_rate: int = 16000,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer", "init_checkpoint"])
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
        if init_checkpoint is not None:
            self.start_from(init_checkpoint)

    def start_from(self, checkpoint: dict) -> None:
        """The upstream run's weights (its frozen LLM parts come from llm_dir), refusing other adapter settings:
        a different LoRA alpha would load without a key mismatch and silently rescale the adapters."""
        upstream = checkpoint.get("hyper_parameters", {})
        for name in ("recipe", "lora"):
            if name in upstream and upstream[name] != self.hparams[name]:
                raise ValueError(
                    f"the run this one starts from was trained with {name}={upstream[name]!r}, this one sets "
                    f"{name}={self.hparams[name]!r}: set model.{name} to the upstream's"
                )
        self.on_load_checkpoint(checkpoint)
        self.load_state_dict(checkpoint["state_dict"])

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

    def usable_items(self, batch: dict) -> UsableItems | None:
        """The items that can train (None when none can); the others are named in a warning. Empty
        transcripts and over-long audio are left out before encoding, items over the LLM's context after it."""
        size = len(batch["text"])
        seconds = (batch["audio_lens"] / self.hparams.sample_rate).tolist()
        reasons = self.model.unusable_input(batch["text"], seconds)
        kept = [index for index in range(size) if index not in reasons]
        items = None
        if kept:
            speech, speech_lens = self.model.embed_speech(select_items(batch, kept))
            targets = [self.model.transcript_ids(batch["text"][i]) for i in kept]
            contexts = [batch["context"][i] for i in kept] if "context" in batch else None
            over = self.model.over_context(targets, speech_lens, contexts)
            reasons.update({kept[i]: why for i, why in over.items()})
            fits = [i for i in range(len(kept)) if i not in over]
            rows = torch.tensor(fits, dtype=torch.long, device=speech.device)
            if fits:
                items = UsableItems(
                    kept=[kept[i] for i in fits],
                    speech=speech[rows],
                    speech_lens=speech_lens[rows],
                    targets=[targets[i] for i in fits],
                    contexts=[contexts[i] for i in fits] if contexts else None,
                )
        for index, reason in sorted(reasons.items()):
            log.warning("skipping %s: %s", batch.get("id", ["?"] * size)[index], reason)
        return items

    def count_skipped(self, batch: dict, items: UsableItems | None) -> None:
        self.skipped_in_training += len(batch["text"]) - (len(items.kept) if items else 0)
        self.log("train/skipped", float(self.skipped_in_training), batch_size=1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        items = None if all_skipped(batch) else self.usable_items(batch)
        self.count_skipped(batch, items)
        if items is None:
            return empty_batch_loss(self)
        loss = self.model.loss(items.speech, items.speech_lens, items.targets, items.contexts)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(items.kept))
        return loss

    @contextmanager
    def decoding_modes(self):
        """Eval mode (no dropout, LoRA's included) for decoding inside a training step, then each part's mode
        back."""
        modes = {module: module.training for module in self.model.modules()}
        self.model.eval()
        try:
            yield
        finally:
            for module, training in modes.items():
                module.train(training)

    def decode(self, items: UsableItems, audio_lens: torch.Tensor, *, beams: int, nbest: int, joint: bool):
        """N-best hypotheses of the items' speech (already encoded), within the audio's length bound."""
        return self.model.decode_hypotheses(
            items.speech.detach(),
            items.speech_lens,
            beams=beams,
            nbest=nbest,
            max_new_tokens=self.model.max_new_tokens(audio_lens, self.hparams.sample_rate),
            contexts=items.contexts,
            context_weight=self.hparams.context_weight if joint and items.contexts else None,
            prune_top_k=self.hparams.prune_top_k,
        )

    @staticmethod
    def make_metrics() -> nn.ModuleDict:
        return nn.ModuleDict(
            {"wer": WordErrorRate(), "cer": CharErrorRate(), "keyword_recall": KeywordRecall()}
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if not all_skipped(batch):
            self.evaluate(batch, self.val_metrics, "val")

    def evaluate(self, batch: dict, metrics: nn.ModuleDict, prefix: str) -> None:
        """Teacher-forced loss, then decoding with the training prompt: WER / CER against the transcripts (of
        the items that could be scored; the others are counted in `{prefix}/skipped`), and keyword recall when
        the batch has keywords (context data)."""
        items = self.usable_items(batch)
        kept = items.kept if items else []
        skipped = float(len(batch["text"]) - len(kept))
        self.log(f"{prefix}/skipped", skipped, batch_size=1, reduce_fx="sum", add_dataloader_idx=False)
        if items is None:
            return
        size = len(kept)
        loss = self.model.loss(items.speech, items.speech_lens, items.targets, items.contexts)
        self.log(f"{prefix}/loss", loss, batch_size=size, sync_dist=True, add_dataloader_idx=False)
        audio_lens = batch["audio_lens"][torch.tensor(kept, device=batch["audio_lens"].device)]
        nbest = self.decode(items, audio_lens, beams=self.hparams.beams, nbest=1, joint=True)
        hypotheses = [self.normalize(item[0].text) for item in nbest]
        references = [self.normalize(batch["text"][i]) for i in kept]
        for name in ("wer", "cer"):
            metrics[name].update(hypotheses, references)
            self.log(f"{prefix}/{name}", metrics[name], batch_size=size, add_dataloader_idx=False)
        if "keywords" in batch:
            keywords = [self.keywords(batch, i) for i in kept]
            metrics["keyword_recall"].update(hypotheses, references, keywords)
            self.log(
                f"{prefix}/keyword_recall",
                metrics["keyword_recall"],
                batch_size=size,
                add_dataloader_idx=False,
            )

    def keywords(self, batch: dict, index: int) -> list[str]:
        """Item `index`'s keywords, normalised as the transcripts are (none without context data)."""
        return self.normalize(" ".join(batch["keywords"][index])).split() if "keywords" in batch else []

    def configure_optimizers(self) -> dict:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return optimizers_with_schedule(
            self.optimizer_factory(trainable), self.scheduler, self.trainer.estimated_stepping_batches
        )
