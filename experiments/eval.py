"""Evaluate a trained checkpoint on the configured test sets, as its own MLflow run linked to the training run.

`python -m experiments.eval experiment=asr/ctc_digits ckpt_path=runs/.../last.ckpt` or `... run_id=<mlflow run>`.
"""

from __future__ import annotations

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from experiments import tracking
from experiments.train import build_loggers, hydra_context, run_tags
from lit_modules.artifacts import find_mlflow_logger


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if not cfg.get("ckpt_path") and not cfg.get("run_id"):
        raise ValueError("give ckpt_path=<checkpoint> or run_id=<MLflow run id>")
    ckpt_path = str(cfg.ckpt_path or tracking.checkpoint_from_run(cfg.run_id, "best"))
    L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    model: L.LightningModule = instantiate(cfg.model)
    source_run = torch.load(ckpt_path, map_location="cpu", weights_only=False).get("mlflow_run_id")
    tags = run_tags(cfg, hydra_context())
    tags[f"{tracking.TAG_PREFIX}checkpoint"] = ckpt_path
    if source_run:
        tags[f"{tracking.TAG_PREFIX}evaluates_run"] = source_run
    loggers = build_loggers(_without_resume(cfg), tags)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[])
    mlflow_logger = find_mlflow_logger(loggers)
    if mlflow_logger is not None:
        tracking.record_run(mlflow_logger, cfg, tags)
    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    if mlflow_logger is not None:
        print(f"\nMLflow run {mlflow_logger.run_id}; browse runs: {tracking.ui_command()}")
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def _without_resume(cfg: DictConfig) -> DictConfig:
    """Evaluation opens a new run: the checkpoint is read for weights, not for resuming its run."""
    cfg = cfg.copy()
    cfg.ckpt_path = None
    cfg.resume_run = "new"
    return cfg


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
