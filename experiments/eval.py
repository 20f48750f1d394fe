"""Evaluate a trained checkpoint on its test sets, as its own MLflow run linked to the training run.

python -m experiments.eval ckpt_path=runs/.../last.ckpt          # model and data from the checkpoint's config
python -m experiments.eval run_id=<mlflow run>                   # its best (else last) checkpoint
python -m experiments.eval run_id=<run> test_manifest=my.jsonl   # on your own manifest
python -m experiments.eval experiment=asr/ctc_digits ckpt_path=...   # data and model from the experiment
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from experiments.core.cli import hydra_command


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from experiments.core.cli import run_command
    from experiments.core.runner import evaluate

    def run(_argv) -> None:
        evaluate(cfg)

    if status := run_command(run):
        sys.exit(status)


if __name__ == "__main__":
    hydra_command(main)
