"""Causal LM pretraining on text: the LM an AcLLM can start from instead of a released one.

The LM is sized by the tokenizer its datamodule trains (TextDataModule), so it is built in `configure_model`,
once that tokenizer exists; the module receives the recipe (`lm`, a partial of `new_causal_lm`). Checkpoints
carry the tokenizer, so a module rebuilt from one (`load_module`) needs no corpus. When fitting ends, the selected
LM (the best checkpoint's weights, else the last) and the tokenizer are written with `save_pretrained` to
`<run folder>/hf` (the trainer's `default_root_dir`, beside `checkpoints/`), the directory
`SpeechLLM(llm_dir=...)` loads, and logged to MLflow as the `text_lm` artifact folder.
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import lightning as L
import torch
from tokenizers import Tokenizer
from torch import nn
from torchmetrics.text import Perplexity
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from lit_modules.artifacts import find_mlflow_logger
from lit_modules.evaluation import PerTestSetEvaluation
from lit_modules.optim import optimizers_with_schedule
from research.acllm.text_lm import SPECIAL_TOKENS

IGNORE = -100
EXPORT_FOLDER = "hf"  # under the trainer's default_root_dir
ARTIFACT_FOLDER = "text_lm"
DIR_TAG = "voxlab.text_lm_dir"


def tokenizer_from_json(text: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(text), **SPECIAL_TOKENS)


class TextLMModule(PerTestSetEvaluation, L.LightningModule):
    def __init__(self, *, lm: partial, optimizer: partial, scheduler: dict | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["lm", "optimizer"])
        self.lm_factory = lm
        self.optimizer_factory = optimizer
        self.scheduler = scheduler or {}
        self.lm: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.val_metrics = self.make_metrics()
        self.test_metrics = nn.ModuleList()

    # --- building ---------------------------------------------------------------------------------------------
    def build(self, tokenizer: PreTrainedTokenizerFast) -> None:
        """A new LM over `tokenizer`'s vocabulary (also for notebooks: no trainer needed)."""
        self.tokenizer = tokenizer
        self.lm = self.lm_factory(tokenizer)

    def configure_model(self) -> None:
        if self.lm is not None:  # built already (earlier stage of this run, or `build`)
            return
        tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            raise RuntimeError(
                "TextLMModule takes its tokenizer from the datamodule (a TextDataModule, set up)"
            )
        self.build(tokenizer)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer"] = self.tokenizer.backend_tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint["tokenizer"]
        if self.lm is None:  # rebuilt outside a trainer (load_module): the checkpoint's tokenizer sizes it
            self.build(tokenizer_from_json(saved))
        elif saved != self.tokenizer.backend_tokenizer.to_str():
            raise ValueError(
                "the checkpoint's tokenizer differs from the one trained on this corpus now (the corpus, its split "
                "or vocab_size changed): its token ids would mean other text"
            )

    # --- steps ------------------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> torch.Tensor:
        return self.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.lm(**batch).loss  # mean over the predicted tokens (labels shifted inside)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    @staticmethod
    def make_metrics() -> nn.ModuleDict:
        return nn.ModuleDict({"perplexity": Perplexity(ignore_index=IGNORE)})

    def evaluate(self, batch: dict, metrics: nn.ModuleDict, prefix: str) -> None:
        output = self.lm(**batch)
        targets = batch["labels"][:, 1:]
        tokens = int((targets != IGNORE).sum())  # the loss's weight: the epoch's value is a per-token mean
        self.log(f"{prefix}/loss", output.loss, batch_size=tokens, sync_dist=True, add_dataloader_idx=False)
        metrics["perplexity"].update(output.logits[:, :-1].float(), targets)
        self.log(f"{prefix}/perplexity", metrics["perplexity"], prog_bar=True, add_dataloader_idx=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluate(batch, self.test_metrics[dataloader_idx], self.test_prefix(dataloader_idx))

    # --- export ---------------------------------------------------------------------------------------------
    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self.export(Path(self.trainer.default_root_dir) / EXPORT_FOLDER, self.selected_lm())

    def selected_lm(self) -> PreTrainedModel:
        """The LM the run selected: the best checkpoint's (lowest validation perplexity, the weights `test`
        evaluates), or the last weights when no checkpoint was kept. On a small corpus the last ones overfit."""
        callback = self.trainer.checkpoint_callback
        best = callback.best_model_path if callback is not None else ""
        if not best:
            return self.lm
        state = torch.load(best, map_location=self.device, weights_only=True)["state_dict"]
        lm = copy.deepcopy(self.lm)
        lm.load_state_dict(
            {key.removeprefix("lm."): value for key, value in state.items() if key.startswith("lm.")}
        )
        return lm

    def export(self, folder: Path, lm: PreTrainedModel | None = None) -> Path:
        """`lm` (default: the module's) and the tokenizer as a transformers directory; logged to MLflow."""
        (lm or self.lm).save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        mlflow_logger = find_mlflow_logger(self.loggers)
        if mlflow_logger is not None:
            mlflow_logger.experiment.log_artifacts(mlflow_logger.run_id, str(folder), ARTIFACT_FOLDER)
            mlflow_logger.experiment.set_tag(mlflow_logger.run_id, DIR_TAG, str(folder.resolve()))
        print(f"\ntext LM saved to {folder.resolve()} (AcLLM: model.model.llm_dir=<that folder>)")
        return folder

    # --- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(self.parameters())
        return optimizers_with_schedule(optimizer, self.scheduler, self.trainer.estimated_stepping_batches)
