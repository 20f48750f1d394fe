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


def tri_stage(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    hold_steps: int,
    total_steps: int,
    init_ratio: float = 0.01,
    final_ratio: float = 0.05,
) -> LambdaLR:
    """wav2vec 2.0's fine-tuning schedule: linear warm-up from `init_ratio` of the base LR to it, a hold at it,
    then exponential decay to `final_ratio` of it at `total_steps` (and there after)."""
    decay_steps = max(1, total_steps - warmup_steps - hold_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return init_ratio + (1 - init_ratio) * step / warmup_steps
        if step < warmup_steps + hold_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps - hold_steps) / decay_steps)
        return final_ratio**progress

    return LambdaLR(optimizer, factor)


def optimizers_with_schedule(optimizer: torch.optim.Optimizer, scheduler: dict, estimated_steps: int) -> dict:
    """Lightning's configure_optimizers answer for `scheduler` = {name: cosine (default) | tri_stage,
    warmup_steps, total_steps (optional, else the trainer's estimate), min_ratio (cosine), hold_steps, init_ratio,
    final_ratio (tri_stage)}; no scheduler when it is empty."""
    if not scheduler:
        return {"optimizer": optimizer}
    options = {key: value for key, value in scheduler.items() if key != "name"}
    options["total_steps"] = int(options.get("total_steps") or estimated_steps)
    options.setdefault("warmup_steps", 0)
    name = scheduler.get("name", "cosine")
    if name not in SCHEDULES:
        raise ValueError(f"unknown scheduler '{name}', expected one of {sorted(SCHEDULES)}")
    schedule = SCHEDULES[name](optimizer, **options)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


SCHEDULES = {"cosine": warmup_cosine, "tri_stage": tri_stage}
