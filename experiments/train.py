"""Train one experiment: `python -m experiments.train experiment=asr/ctc_digits [overrides]`.

The story: seed, build datamodule, model, callbacks, loggers and trainer from the config, fit, test, report
the run, return the metric a sweeper optimises. Everything else is configuration.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf
from torch import nn

from experiments import tracking
from lit_modules.artifacts import find_mlflow_logger
from lit_modules.callbacks import ResumeState, SkippedAudioCounter

log = logging.getLogger(__name__)


def hydra_context() -> dict[str, Any]:
    """Experiment choice, sweep folder and job number when running under Hydra, else empty."""
    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    context = {"experiment": hydra_cfg.runtime.choices.get("experiment") or "none"}
    if hydra_cfg.mode == RunMode.MULTIRUN:
        context["sweep_dir"] = hydra_cfg.sweep.dir
        context["job_num"] = hydra_cfg.job.num
    return context


def run_tags(cfg: DictConfig, context: dict[str, Any]) -> dict[str, str]:
    experiment = cfg.get("experiment_name") or context.get("experiment") or "none"
    tags = {
        f"{tracking.TAG_PREFIX}experiment": experiment,
        f"{tracking.TAG_PREFIX}component": cfg.get("component") or experiment.split("/")[0],
        f"{tracking.TAG_PREFIX}output_dir": str(cfg.paths.output_dir),
    }
    tags.update({str(k): str(v) for k, v in (cfg.get("tags") or {}).items()})
    parent = tracking.sweep_parent_run_id(context["sweep_dir"]) if "sweep_dir" in context else None
    if parent:
        tags["mlflow.parentRunId"] = parent
        tags[f"{tracking.TAG_PREFIX}sweep_id"] = parent
    return tags


def resumed_run_id(ckpt_path: str | None) -> str | None:
    if not ckpt_path:
        return None
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path does not exist: {ckpt_path}")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    return checkpoint.get("mlflow_run_id")


def build_loggers(cfg: DictConfig, tags: dict[str, str]) -> list:
    previous_run = resumed_run_id(cfg.get("ckpt_path"))
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if name == "mlflow":
            same_run = previous_run if cfg.resume_run == "same" else None
            run_tags_ = dict(tags)
            if previous_run and not same_run:
                run_tags_[f"{tracking.TAG_PREFIX}resumed_from"] = previous_run
            loggers.append(instantiate(logger_cfg, run_id=same_run, tags=run_tags_))
        else:
            loggers.append(instantiate(logger_cfg))
    return loggers


def build_callbacks(cfg: DictConfig, *, has_logger: bool = True) -> list[L.Callback]:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not has_logger:  # Lightning refuses a learning-rate monitor without a logger (logger=none)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return [*callbacks, ResumeState(config=resolved), SkippedAudioCounter()]


def record_checkpoints(trainer: L.Trainer, mlflow_logger) -> None:
    checkpoint = trainer.checkpoint_callback
    if mlflow_logger is None or checkpoint is None or not trainer.is_global_zero:
        return
    tags = {"checkpoint_dir": checkpoint.dirpath, "checkpoint_best": checkpoint.best_model_path}
    last = Path(checkpoint.dirpath or "") / "last.ckpt"
    if last.is_file():
        tags["checkpoint_last"] = str(last)
    for key, value in tags.items():
        if value:
            mlflow_logger.experiment.set_tag(mlflow_logger.run_id, f"{tracking.TAG_PREFIX}{key}", str(value))


def check_training_modes(model: nn.Module) -> None:
    """Refuse a module in eval mode that holds trainable weights: Lightning keeps each submodule's mode, so a part
    loaded for inference and then trained would silently lose its dropout and SpecAugment."""
    stuck = [
        name
        for name, module in model.named_modules()
        if not module.training and any(p.requires_grad for p in module.parameters(recurse=False))
    ]
    if stuck:
        raise ValueError(
            f"modules in eval mode with trainable parameters: {', '.join(stuck[:5])}"
            f"{' ...' if len(stuck) > 5 else ''}; build them in train mode or freeze them (requires_grad_(False))"
        )


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) the configured experiment; returns the final metrics."""
    L.seed_everything(cfg.seed, workers=True)
    context = hydra_context()
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    model: L.LightningModule = instantiate(cfg.model)
    tags = run_tags(cfg, context)
    loggers = build_loggers(cfg, tags)
    callbacks = build_callbacks(cfg, has_logger=bool(loggers))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    mlflow_logger = find_mlflow_logger(loggers)
    if mlflow_logger is not None:
        tracking.record_run(mlflow_logger, cfg, tags)

    if cfg.get("train", True):
        check_training_modes(model)
        # Our checkpoints carry RNG states and the config; they are trusted, so no weights-only unpickling.
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test", False):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    record_checkpoints(trainer, mlflow_logger)

    if mlflow_logger is not None and trainer.is_global_zero:
        print(f"\nMLflow run {mlflow_logger.run_id} in experiment '{mlflow_logger._experiment_name}'")
        print(f"Browse runs: {tracking.ui_command()}")
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    optimized = cfg.get("optimized_metric")
    return metrics.get(optimized) if optimized else None


if __name__ == "__main__":
    main()
