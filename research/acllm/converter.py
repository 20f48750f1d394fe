"""Seed-ASR's converter: splice k consecutive encoder frames (40 ms -> 160 ms at k = 4) and project them to the
LLM's width, linearly or with SLAM-LLM's two-layer MLP."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F


class Converter(nn.Module):
    def __init__(
        self,
        *,
        input_dim: int,
        output_dim: int,
        splice: int = 4,
        projection: str = "linear",
        hidden_dim: int = 2048,
    ):
        super().__init__()
        if splice < 1:
            raise ValueError(f"splice must be >= 1, got {splice}")
        self.splice = splice
        spliced = splice * input_dim
        if projection == "linear":
            self.project = nn.Linear(spliced, output_dim)
        elif projection == "mlp":
            self.project = nn.Sequential(
                nn.Linear(spliced, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, output_dim)
            )
        else:
            raise ValueError(f"projection must be 'linear' or 'mlp', got {projection!r}")

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        """ceil(frames / k): a partial last group is kept (zero-padded), unlike SLAM-LLM's, which drops it."""
        return torch.div(lens + self.splice - 1, self.splice, rounding_mode="floor")

    def forward(self, frames: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, input_dim), (B,) -> (B, ceil(T / k), output_dim), (B,). Frames past each item's length are
        zeroed first, so the batch's padding never enters an item's last spliced group."""
        valid = torch.arange(frames.shape[1], device=frames.device)[None] < lens[:, None]
        frames = frames * valid[..., None]
        frames = F.pad(frames, (0, 0, 0, -frames.shape[1] % self.splice))
        spliced = rearrange(frames, "b (t k) d -> b t (k d)", k=self.splice)
        return self.project(spliced), self.output_lengths(lens)
