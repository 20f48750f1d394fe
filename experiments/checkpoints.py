"""Load trained parts back from voxlab checkpoints (a path, or an MLflow run id): the checkpoint carries its
resolved config (`voxlab_config`, written by `ResumeState`), so a sub-module is rebuilt from its own config
entry and given its weights, without building the rest of the training module (its teacher, discriminator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from experiments import tracking
from research.tokenizer.teachers import EncoderTeacher


def resolve_checkpoint(ckpt_path: str | None = None, run_id: str | None = None, which: str = "last") -> Path:
    if bool(ckpt_path) == bool(run_id):
        raise ValueError("give exactly one of ckpt_path or run_id")
    path = Path(ckpt_path) if ckpt_path else tracking.checkpoint_from_run(run_id, which)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    # Our checkpoints carry RNG states and the config; they are trusted, so no weights-only unpickling.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "voxlab_config" not in checkpoint:
        raise ValueError(f"{path} was not written by experiments.train (no voxlab_config inside)")
    return checkpoint


def submodule_config(path: Path, checkpoint: dict[str, Any], key: str) -> dict:
    """The config that builds `model.<key>`. A part that was itself loaded from an earlier checkpoint (LUISE
    iteration 2 started from iteration 1) is followed back to the config that built it, so that overrides apply to
    the module's own arguments rather than to the loader's."""
    config = checkpoint["voxlab_config"]["model"]
    for part in key.split("."):
        if not isinstance(config, dict) or part not in config:
            raise KeyError(f"{path}: the model config has no '{key}'")
        config = config[part]
    if config.get("_target_") != f"{__name__}.load_submodule":
        return config
    earlier = resolve_checkpoint(config.get("ckpt_path"), config.get("run_id"), config.get("which", "last"))
    built = submodule_config(earlier, load_checkpoint(earlier), config["key"])
    return {**built, **(config.get("config_overrides") or {})}


def load_submodule(
    key: str,
    *,
    ckpt_path: str | None = None,
    run_id: str | None = None,
    which: str = "last",
    config_overrides: dict | None = None,
    train: bool = False,
) -> nn.Module:
    """Rebuild `model.<key>` (e.g. "codec", "net.encoder") from a checkpoint's config and load its weights;
    `config_overrides` change arguments that hold no weights (SpecAugment, dropout for fine-tuning). The module
    comes in eval mode for inference; `train=True` for a part that goes on training (fine-tuning, LUISE
    iteration 2), whose dropout and SpecAugment act only in train mode, which Lightning does not set for it."""
    path = resolve_checkpoint(ckpt_path, run_id, which)
    checkpoint = load_checkpoint(path)
    module = instantiate(
        {**submodule_config(path, checkpoint, key), **(config_overrides or {})}, _convert_="all"
    )
    prefix = f"{key}."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    module.load_state_dict(state)
    return module.train(train)


def encoder_teacher(
    *,
    ckpt_path: str | None = None,
    run_id: str | None = None,
    layer: int | str = "avg",
    key: str = "net.encoder",
) -> EncoderTeacher:
    """A frozen semantic teacher from a trained speech encoder (the CTC recogniser's, later LUISE's)."""
    return EncoderTeacher(encoder=load_submodule(key, ckpt_path=ckpt_path, run_id=run_id), layer=layer)
