"""Weights a checkpoint leaves out: frozen parts that their own source rebuilds (a teacher from its checkpoint,
a frozen LLM from its directory), so a student's checkpoint is not a copy of a model it never changed."""

from __future__ import annotations

import lightning as L


def drop_frozen(checkpoint: dict, module: L.LightningModule, prefix: str) -> None:
    """Remove from `checkpoint["state_dict"]` everything under `prefix` but trainable parameters (a LoRA
    adapter's stay; frozen weights and buffers go)."""
    parameters = module.named_parameters(remove_duplicate=False)  # a tied weight (lm_head) under each name
    trainable = {name for name, p in parameters if p.requires_grad}
    state = checkpoint["state_dict"]
    checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith(prefix) or k in trainable}


def restore_dropped(checkpoint: dict, module: L.LightningModule, prefix: str) -> None:
    """Fill the keys `drop_frozen` removed from the module's own (rebuilt) weights, so strict loading works; a
    missing trainable weight (an adapter) stays missing, and strict loading refuses the checkpoint."""
    trainable = {name for name, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}
    state = checkpoint["state_dict"]
    for name, value in module.state_dict().items():
        if name.startswith(prefix) and name not in state and name not in trainable:
            state[name] = value
