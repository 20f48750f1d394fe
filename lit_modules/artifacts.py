"""Artifact helper every LightningModule uses: audio clips (wav), figures (png) and text, sent to MLflow when an
MLflow logger is attached, otherwise written under the trainer's log folder. Only global rank 0 writes."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import MLFlowLogger

from research.audio import write_audio


def find_mlflow_logger(loggers: list) -> MLFlowLogger | None:
    return next((lg for lg in loggers if isinstance(lg, MLFlowLogger)), None)


def log_artifact_file(trainer: L.Trainer, local_path: Path, artifact_dir: str) -> None:
    if not trainer.is_global_zero:
        return
    mlflow_logger = find_mlflow_logger(trainer.loggers)
    if mlflow_logger is not None:
        mlflow_logger.experiment.log_artifact(mlflow_logger.run_id, str(local_path), artifact_dir)
    else:
        target = Path(trainer.default_root_dir) / "artifacts" / artifact_dir
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(local_path, target / local_path.name)


def log_artifact_folder(trainer: L.Trainer, folder: Path, artifact_dir: str) -> None:
    """A whole folder (a model directory) under `artifact_dir/<folder name>`."""
    if not trainer.is_global_zero:
        return
    mlflow_logger = find_mlflow_logger(trainer.loggers)
    if mlflow_logger is not None:
        target = f"{artifact_dir}/{folder.name}"
        mlflow_logger.experiment.log_artifacts(mlflow_logger.run_id, str(folder), target)
    else:
        target = Path(trainer.default_root_dir) / "artifacts" / artifact_dir / folder.name
        shutil.copytree(folder, target, dirs_exist_ok=True)


def _write_and_log(trainer: L.Trainer, artifact_dir: str, name: str, write) -> None:
    if not trainer.is_global_zero:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        write(path)
        log_artifact_file(trainer, path, artifact_dir)


def step_dir(trainer: L.Trainer, kind: str) -> str:
    return f"{kind}/step_{trainer.global_step:07d}"


def log_audio(trainer: L.Trainer, name: str, wave: torch.Tensor, sample_rate: int) -> None:
    """Log a (samples,) or (1, samples) waveform as `audio/step_N/<name>.wav`."""
    _write_and_log(
        trainer, step_dir(trainer, "audio"), f"{name}.wav", lambda p: write_audio(p, wave, sample_rate)
    )


def log_figure(trainer: L.Trainer, name: str, figure) -> None:
    """Log a matplotlib figure as `figures/step_N/<name>.png` and close it."""
    import matplotlib.pyplot as plt

    _write_and_log(trainer, step_dir(trainer, "figures"), f"{name}.png", lambda p: figure.savefig(p, dpi=100))
    plt.close(figure)


def log_text(trainer: L.Trainer, name: str, text: str) -> None:
    _write_and_log(trainer, step_dir(trainer, "text"), f"{name}.txt", lambda p: p.write_text(text))
