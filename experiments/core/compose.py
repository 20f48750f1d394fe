"""Compose a command's Hydra config outside `@hydra.main` (pipeline stages, benchmarks, tests), with one clear
error for an experiment that does not exist."""

from __future__ import annotations

from collections.abc import Iterable

from hydra import compose, initialize_config_module
from hydra.errors import MissingConfigException
from omegaconf import DictConfig

from experiments.core.cli import UserError, check_experiment


def compose_config(overrides: Iterable[str] = (), config_name: str = "train") -> DictConfig:
    overrides = list(overrides)
    check_experiment(overrides)
    try:
        with initialize_config_module(config_module="experiments.configs", version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)
    except MissingConfigException as error:
        raise UserError(str(error).splitlines()[0]) from error
