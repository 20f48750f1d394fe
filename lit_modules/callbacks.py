"""Callbacks shared by every training stage."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lit_modules.artifacts import find_mlflow_logger


def rng_states() -> dict[str, Any]:
    """This process's RNG states (torch, numpy, python, cuda), as tensors, tuples and plain values only, so that a
    checkpoint holding them opens with `torch.load(weights_only=True)` (numpy's state allow-listed)."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG states, indexed by rank (a collective under torch.distributed: call on every rank)."""
    own = rng_states()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [own]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, own)
    return gathered


class ResumeState(L.Callback):
    """Makes `ckpt_path=` resumption exact and traceable: stores the RNG states (dropout, augmentation, masking) of
    every rank, the MLflow run id and the resolved config in every checkpoint, and restores each rank's own RNG
    states on load (rank 0's, with a warning, when the number of ranks changed).

    Lightning builds the checkpoint on every rank (and writes rank 0's), so the gather runs on all of them."""

    def __init__(self, config: dict | None = None):
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["rng_states"] = gather_rng_states()
        mlflow_logger = find_mlflow_logger(trainer.loggers)
        if mlflow_logger is not None:
            checkpoint["mlflow_run_id"] = mlflow_logger.run_id
        if self.config is not None:
            checkpoint["voxlab_config"] = self.config

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if not states:
            return
        if isinstance(states, dict):  # written before per-rank states: the saving rank's only
            states = [states]
        rank, world_size = trainer.global_rank, trainer.world_size
        if len(states) != world_size:
            rank_zero_warn(
                f"checkpoint holds the RNG states of {len(states)} rank(s), this run has {world_size}: "
                "every rank restores rank 0's, so resumption is not exact"
            )
            rank = 0
        set_rng_states(states[rank])


class SkippedAudioCounter(L.Callback):
    """Counts items the datasets skipped as bad audio (see datamodules.datasets) and logs
    `data/skipped_<stage>` as a metric at each epoch end, summed over ranks."""

    def __init__(self):
        self.counts = {"train": 0, "val": 0, "test": 0}

    def _count(self, stage: str, batch: Any) -> None:
        if isinstance(batch, dict):
            self.counts[stage] += int(batch.get("n_skipped", 0))

    def _log(self, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.log(f"data/skipped_{stage}", float(self.counts[stage]), sync_dist=True, reduce_fx="sum")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._count("train", batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._count("val", batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._count("test", batch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._log(pl_module, "train")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._log(pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._log(pl_module, "test")

    def state_dict(self) -> dict:
        return dict(self.counts)

    def load_state_dict(self, state_dict: dict) -> None:
        self.counts.update(state_dict)


class ValidateAtLastStep(L.Callback):
    """Lightning validates only on its interval, so the steps after the last one (72 of the demo's 1,500) were
    never validated nor checkpointed as best: asking to stop at `max_steps` makes it validate there too."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
