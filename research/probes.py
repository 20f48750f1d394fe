"""Small probes that ask what a representation knows: a linear classifier trained on frozen features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def segment_frames(start: float, end: float, frame_rate: float) -> slice:
    """Frames that overlap a time segment [start, end) in seconds."""
    return slice(math.floor(start * frame_rate), math.ceil(end * frame_rate))


def bag_of_codes(codes: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised histogram (size,) of the codes of one segment: an order-free summary of discrete tokens."""
    return torch.bincount(codes.reshape(-1), minlength=size).float() / max(1, codes.numel())


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    steps: int = 500,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Accuracy on the test set of a softmax-regression probe fitted (full batch, Adam) on the train set; features
    are standardised with train statistics so the probe's budget does not depend on their scale."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    weight = (torch.randn(train_x.shape[1], classes, generator=generator) * 0.01).requires_grad_()
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(train_x @ weight + bias, train_y).backward()
        optimizer.step()
    with torch.no_grad():
        return float(((test_x @ weight + bias).argmax(-1) == test_y).float().mean())
