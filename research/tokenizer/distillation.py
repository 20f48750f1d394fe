"""Semantic distillation of RVQ-1 (SpeechTokenizer): losses between the projected first-level output and the
teacher's features, and time alignment of teacher features to the codec frame rate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def d_axis_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(cos) with the cosine taken per feature dimension across time; (B, T, D) inputs.

    SpeechTokenizer's default ("D-axis"): each feature dimension's trajectory over time is matched, so the
    projection may rescale dimensions but not reorder events."""
    cosine = F.cosine_similarity(student, teacher, dim=1)  # (B, D)
    return -F.logsigmoid(cosine).mean()


def t_axis_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L1 plus -log sigmoid(cos) with the cosine taken per frame across features; (B, T, D) inputs."""
    cosine = F.cosine_similarity(student, teacher, dim=-1)  # (B, T)
    return F.l1_loss(student, teacher) - F.logsigmoid(cosine).mean()


DISTILLATION_LOSSES = {"d_axis": d_axis_loss, "t_axis": t_axis_loss}


def align_to_frames(features: torch.Tensor, frames: int) -> torch.Tensor:
    """Resample teacher features (B, T_teacher, D) to `frames` steps by linear interpolation in time (average
    pooling would need an integer rate ratio; interpolation covers 50 -> 12.5 Hz and 49.9 -> 50 Hz alike)."""
    if features.shape[1] == frames:
        return features
    resampled = F.interpolate(
        rearrange(features, "b t d -> b d t"), size=frames, mode="linear", align_corners=False
    )
    return rearrange(resampled, "b d t -> b t d")
