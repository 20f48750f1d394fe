"""Step helpers shared by the LightningModules."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def empty_batch_loss(parameters: nn.Module | Iterable[nn.Parameter]) -> torch.Tensor:
    """A zero loss connected to every trainable parameter, for a batch with nothing to train on (every item was
    skipped as bad audio). Returning None instead skips this rank's backward: under DDP the other ranks then wait
    forever in the gradient all-reduce. With this loss every rank takes the same backward and optimizer step, this
    one contributing zero gradients. Pass a module or, for one optimizer of several, its parameters."""
    if isinstance(parameters, nn.Module):
        parameters = parameters.parameters()
    trainable = [p for p in parameters if p.requires_grad]
    if not trainable:  # nothing to train (all frozen): still a loss that backward accepts
        return torch.zeros((), requires_grad=True)
    return sum((p.sum() * 0.0 for p in trainable[1:]), trainable[0].sum() * 0.0)


def all_skipped(batch: dict) -> bool:
    """True when every item of the batch was skipped as bad audio (the collate kept none)."""
    return batch["audio"].shape[0] == 0


def any_rank_all_skipped(batch: dict, device: torch.device) -> bool:
    """True on every rank when some rank's batch is all bad audio. For a module whose forward itself talks to
    the other ranks (the tokenizer's quantizer all-reduces its EMA statistics), a zero loss is not enough: every
    rank must leave the step out together."""
    flag = torch.tensor(float(all_skipped(batch)), device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag)
    return bool(flag > 0)


def select_items(batch: dict, rows: list[int]) -> dict:
    """The batch restricted to items `rows`: per-item tensors and lists are indexed, anything else is kept."""
    size = len(batch["audio_lens"])
    index = torch.tensor(rows, dtype=torch.long, device=batch["audio_lens"].device)
    selected = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == size:
            selected[key] = value[index.to(value.device)]
        elif isinstance(value, list) and len(value) == size:
            selected[key] = [value[i] for i in rows]
        else:
            selected[key] = value
    return selected
