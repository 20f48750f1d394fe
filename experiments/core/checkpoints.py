"""Open voxlab checkpoints safely and rebuild trained parts from them (a path, or an MLflow run id).

- Safe: `torch.load(weights_only=True)`; the few non-tensor types voxlab and Lightning write (numpy RNG state,
  the config as plain containers) are allow-listed, so a checkpoint carrying any other pickled object is refused
  before anything of it runs.
- Self-contained: the checkpoint carries its resolved config (`voxlab_config`, written by `ResumeState`), in
  which every part that was loaded from an upstream checkpoint has been replaced by the config that built it
  (`inline_loaded_parts`), so it rebuilds after the upstream file is gone.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from experiments.core import tracking
from experiments.core.cli import UserError
from research.tokenizer.teachers import EncoderTeacher

LOADER = f"{__name__}.load_submodule"
INITIAL_WEIGHTS = f"{__name__}.initial_weights"

# What Lightning and ResumeState put in a checkpoint besides tensors and plain containers: numpy's RNG state
# (an array, its dtype) and numpy scalars in callback states.
SAFE_GLOBALS = [
    np.ndarray,
    np.dtype,
    np.dtypes.UInt32DType,
    np.dtypes.Float64DType,
    np.dtypes.Float32DType,
    np.dtypes.Int64DType,
    np._core.multiarray._reconstruct,
    np._core.multiarray.scalar,
]
torch.serialization.add_safe_globals(SAFE_GLOBALS)


class PlainHyperparameters(L.Callback):
    """Stores Lightning's `hyper_parameters` as plain containers: Hydra hands modules DictConfig arguments, which
    a weights-only load refuses."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = plain(checkpoint["hyper_parameters"])


def plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(item) for item in value)
    return value


class UnsafeCheckpointError(UserError):
    """A checkpoint holding pickled objects outside the allow-list: refused, nothing of it was run."""


def safe_load(path: str | Path) -> dict[str, Any]:
    """torch.load restricted to tensors, plain containers and SAFE_GLOBALS."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        reason = f"it holds a pickled {found.group(1)}" if found else "it is not a weights-only file"
        raise UnsafeCheckpointError(f"{path}: refused to open, {reason}; nothing of it was run") from error


def resolve_checkpoint(ckpt_path: str | None = None, run_id: str | None = None, which: str = "last") -> Path:
    if bool(ckpt_path) == bool(run_id):
        raise UserError("give exactly one of ckpt_path or run_id")
    path = Path(ckpt_path) if ckpt_path else tracking.checkpoint_from_run(run_id, which)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    checkpoint = safe_load(path)
    if "voxlab_config" not in checkpoint:
        raise UserError(f"{path} was not written by experiments.train (no voxlab_config inside)")
    return checkpoint


def checkpoint_run_id(path: str | Path) -> str | None:
    """The MLflow run that wrote a checkpoint (None for one written without MLflow)."""
    return safe_load(path).get("mlflow_run_id")


def node_at(config: dict, key: str, source: Path | str = "config") -> dict:
    for part in key.split("."):
        if not isinstance(config, dict) or part not in config:
            raise KeyError(f"{source}: the model config has no '{key}'")
        config = config[part]
    return config


def submodule_config(path: Path, checkpoint: dict[str, Any], key: str) -> dict:
    """The config that builds `model.<key>` from scratch (checkpoints written before inlining still name the
    upstream checkpoint: that one is followed back)."""
    config = node_at(checkpoint["voxlab_config"]["model"], key, path)
    return inline_loaded_parts(config)


def inline_loaded_parts(config: Any) -> Any:
    """A copy of `config` where every `load_submodule` node is replaced by the config that built that part,
    with its `config_overrides` applied, and every `initial_weights` node by None (the checkpoint holds the
    weights that training started from them): what a checkpoint must carry to rebuild without its upstream
    file."""
    if isinstance(config, list):
        return [inline_loaded_parts(item) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("_target_") == INITIAL_WEIGHTS:
        return None
    if config.get("_target_") == LOADER:
        earlier = resolve_checkpoint(
            config.get("ckpt_path"), config.get("run_id"), config.get("which", "last")
        )
        built = submodule_config(earlier, load_checkpoint(earlier), config["key"])
        return {**built, **(config.get("config_overrides") or {})}
    return {key: inline_loaded_parts(value) for key, value in config.items()}


def load_submodule(
    key: str,
    *,
    ckpt_path: str | None = None,
    run_id: str | None = None,
    which: str = "last",
    config_overrides: dict | None = None,
    train: bool = False,
    load_weights: bool = True,
) -> nn.Module:
    """Rebuild `model.<key>` (e.g. "codec", "net.encoder") from a checkpoint's config and load its weights;
    `config_overrides` change arguments that hold no weights (SpecAugment, dropout for fine-tuning). The module
    comes in eval mode for inference; `train=True` for a part that goes on training (fine-tuning, LUISE
    iteration 2), whose dropout and SpecAugment act only in train mode, which Lightning does not set for it.
    `load_weights=False` gives the architecture only: a LightningModule that wraps the part (peft LoRA) takes
    the weights afterwards (`initial_weights`)."""
    path = resolve_checkpoint(ckpt_path, run_id, which)
    checkpoint = load_checkpoint(path)
    module = instantiate(
        {**submodule_config(path, checkpoint, key), **(config_overrides or {})}, _convert_="all"
    )
    if load_weights:
        prefix = f"{key}."
        state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        module.load_state_dict(state)
    return module.train(train)


def initial_weights(*, ckpt_path: str | None = None, run_id: str | None = None, which: str = "last") -> dict:
    """An earlier run's weights (`state_dict`), its hyperparameters and what its module records beside them (the
    LLM it was trained on), for a stage that starts from that run: context SFT after SFT, MWER after context
    SFT."""
    checkpoint = load_checkpoint(resolve_checkpoint(ckpt_path, run_id, which))
    kept = ("state_dict", "hyper_parameters", "voxlab_llm")
    return {key: value for key, value in checkpoint.items() if key in kept}


def encoder_teacher(
    *,
    ckpt_path: str | None = None,
    run_id: str | None = None,
    layer: int | str = "avg",
    key: str = "net.encoder",
) -> EncoderTeacher:
    """A frozen semantic teacher from a trained speech encoder (the CTC recogniser's, later LUISE's)."""
    return EncoderTeacher(encoder=load_submodule(key, ckpt_path=ckpt_path, run_id=run_id), layer=layer)


def load_module(path: str | Path) -> nn.Module:
    """The whole trained LightningModule, rebuilt from the checkpoint's config and given its weights, in eval
    mode (for tools that use a model as trained: transcription)."""
    checkpoint = load_checkpoint(path)
    module = instantiate(checkpoint["voxlab_config"]["model"], _convert_="all")
    module.on_load_checkpoint(checkpoint)  # fills the frozen weights the checkpoint leaves out
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()
