"""The machinery behind `experiments.train` and `experiments.eval`: build data, model, loggers, callbacks and trainer
from a composed config, fit / test, and record the run in MLflow."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from experiments.core import tracking
from experiments.core.checkpoints import (
    PlainHyperparameters,
    checkpoint_run_id,
    inline_loaded_parts,
    load_checkpoint,
    resolve_checkpoint,
)
from experiments.core.cli import UserError
from lit_modules.artifacts import find_mlflow_logger
from lit_modules.callbacks import ResumeState, SkippedAudioCounter, ValidateAtLastStep
from lit_modules.loggers import GlobalStepMLFlowLogger

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
    return checkpoint_run_id(ckpt_path)


def build_loggers(cfg: DictConfig, tags: dict[str, str]) -> list:
    previous_run = resumed_run_id(cfg.get("ckpt_path"))
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if name == "mlflow":
            target = cfg.get("mlflow_run_id") or (previous_run if cfg.resume_run == "same" else None)
            if previous_run and previous_run != target:
                tags[f"{tracking.TAG_PREFIX}resumed_from"] = previous_run  # recorded on the run by record_run
            loggers.append(instantiate(logger_cfg, run_id=target, tags=tags))
        else:
            loggers.append(instantiate(logger_cfg))
    return loggers


def attach_loggers(trainer: L.Trainer, loggers: list) -> MLFlowLogger | None:
    """Give step-aligned loggers their trainer; returns the MLflow logger, if any."""
    for logger in loggers:
        if isinstance(logger, GlobalStepMLFlowLogger):
            logger.trainer = trainer
    return find_mlflow_logger(loggers)


def build_callbacks(cfg: DictConfig, *, has_logger: bool = True) -> list[L.Callback]:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not has_logger:  # Lightning refuses a learning-rate monitor without a logger (logger=none)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    # parts loaded from upstream checkpoints are stored as the configs that built them: the file stands alone
    resolved = inline_loaded_parts(OmegaConf.to_container(cfg, resolve=True))
    extra = [
        ResumeState(config=resolved),
        PlainHyperparameters(),
        SkippedAudioCounter(),
        ValidateAtLastStep(),
    ]
    return [*callbacks, *extra]


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
    mlflow_logger = attach_loggers(trainer, loggers)
    if mlflow_logger is not None:
        tracking.record_run(mlflow_logger, cfg, tags)

    if cfg.get("train", True):
        check_training_modes(model)
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test", False):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    record_checkpoints(trainer, mlflow_logger)

    if mlflow_logger is not None and trainer.is_global_zero:
        print(f"\nMLflow run {mlflow_logger.run_id} in experiment '{mlflow_logger._experiment_name}'")
        print(f"Browse runs: {tracking.ui_command()}")
    return metrics


def command_line_overrides(prefixes: tuple[str, ...] = ("data.", "model.")) -> list[str]:
    """The `data.*` / `model.*` overrides given on the command line (key=value, leading + dropped)."""
    if not HydraConfig.initialized():
        return []
    task = HydraConfig.get().overrides.task
    return [o.lstrip("+") for o in task if o.lstrip("+").startswith(prefixes) and "=" in o]


def evaluation_config(cfg: DictConfig, ckpt_path: Path) -> DictConfig:
    """Data and model as the checkpoint was trained with, unless `experiment=` was chosen; command-line `data.*`
    and `model.*` overrides on top; `test_manifest=M` evaluates on that one manifest instead of the test sets."""
    cfg = cfg.copy()
    with open_dict(cfg):
        if not cfg.get("experiment_name"):  # no experiment= given: rebuild as trained
            trained = OmegaConf.create(load_checkpoint(ckpt_path)["voxlab_config"])
            cfg.data, cfg.model = trained.data, trained.model
            for key in ("component", "experiment_name"):
                cfg[key] = cfg.get(key) or trained.get(key)
            overrides = OmegaConf.from_dotlist(command_line_overrides())
            cfg.merge_with(overrides)
        if "teacher" in cfg.model:  # a frozen teacher serves training losses only: not needed, nor its files
            cfg.model.teacher = None
            if "distillation" in (cfg.model.get("loss_weights") or {}):
                cfg.model.loss_weights.distillation = 0.0
        if cfg.get("test_manifest"):
            cfg.data.test_manifests = {Path(cfg.test_manifest).stem: str(cfg.test_manifest)}
        cfg.ckpt_path, cfg.resume_run = (
            None,
            "new",
        )  # the checkpoint gives weights; the evaluation is a new run
    return cfg


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a trained checkpoint (`ckpt_path=` or `run_id=`) as its own MLflow run linked to the training run."""
    if not cfg.get("ckpt_path") and not cfg.get("run_id"):
        raise UserError("give ckpt_path=<checkpoint> or run_id=<MLflow run id>")
    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"), None if cfg.get("ckpt_path") else cfg.run_id, "best")
    cfg = evaluation_config(cfg, ckpt_path)
    L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    model: L.LightningModule = instantiate(cfg.model)
    tags = run_tags(cfg, hydra_context())
    tags[f"{tracking.TAG_PREFIX}checkpoint"] = str(ckpt_path)
    source_run = checkpoint_run_id(ckpt_path)
    if source_run:
        tags[f"{tracking.TAG_PREFIX}evaluates_run"] = source_run
    loggers = build_loggers(cfg, tags)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[SkippedAudioCounter()])
    mlflow_logger = attach_loggers(trainer, loggers)
    if mlflow_logger is not None:
        tracking.record_run(mlflow_logger, cfg, tags)
    trainer.test(model, datamodule=datamodule, ckpt_path=str(ckpt_path), weights_only=True)
    if mlflow_logger is not None:
        print(f"\nMLflow run {mlflow_logger.run_id}; browse runs: {tracking.ui_command()}")
    return {k: float(v) for k, v in trainer.callback_metrics.items()}
