"""The MLflow logger every training run uses."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger


class GlobalStepMLFlowLogger(MLFlowLogger):
    """Logs every metric at the trainer's global step, the number checkpoints (`step0000300.ckpt`) and artifacts
    (`audio/step_0000300/`) carry. Lightning's own step is the count of batches stepped before the current one:
    one less during training and validation, so a validation after 300 steps was logged at 299."""

    trainer: L.Trainer | None = None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, self.trainer.global_step if self.trainer is not None else step)
