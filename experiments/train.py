"""Train one experiment: `python -m experiments.train experiment=asr/ctc_digits [overrides]`.

The story: seed, build datamodule, model, callbacks, loggers and trainer from the config, fit, test, report
the run, return the metric a sweeper optimises. The steps live in `experiments.core.runner`; everything else
is configuration.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from experiments.core.cli import hydra_command


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from experiments.core.cli import run_command
    from experiments.core.runner import train

    metrics: dict[str, float] = {}
    if status := run_command(lambda _: metrics.update(train(cfg))):
        sys.exit(status)
    optimized = cfg.get("optimized_metric")
    return metrics.get(optimized) if optimized else None


if __name__ == "__main__":
    hydra_command(main)
