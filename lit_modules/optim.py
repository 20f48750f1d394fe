"""Learning-rate schedules shared by the LightningModules."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.05
) -> LambdaLR:
    """Linear warm-up to the base LR, then cosine decay to `min_ratio` of it at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def optimizers_with_schedule(optimizer: torch.optim.Optimizer, scheduler: dict, estimated_steps: int) -> dict:
    """Lightning's configure_optimizers answer for `scheduler` = {warmup_steps, min_ratio, total_steps (optional,
    else the trainer's estimate)}; no scheduler when it is empty."""
    if not scheduler:
        return {"optimizer": optimizer}
    schedule = warmup_cosine(
        optimizer,
        warmup_steps=scheduler.get("warmup_steps", 0),
        total_steps=int(scheduler.get("total_steps") or estimated_steps),
        min_ratio=scheduler.get("min_ratio", 0.05),
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
