"""Span masking of log-mel frames (BEST-RQ) and the frame-rate bookkeeping between 10 ms inputs and 40 ms targets."""

from __future__ import annotations

import torch
from torch import nn

from research.features import lengths_to_mask


def span_mask(
    lens: torch.Tensor,
    max_len: int,
    *,
    start_prob: float,
    span: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, max_len) bool mask: every valid frame starts a span of `span` frames with probability `start_prob`;
    spans stop at the utterance's end, so padding is never masked. Expected masked fraction away from the edges:
    1 - (1 - start_prob) ** span."""
    valid = lengths_to_mask(lens, max_len)
    starts = (torch.rand(valid.shape, generator=generator, device="cpu") < start_prob).to(lens.device) & valid
    # frame t is masked when a span started within the previous `span` frames: a running count over a window
    counts = nn.functional.conv1d(
        starts[:, None].float(), torch.ones(1, 1, span, device=lens.device), padding=span - 1
    )[:, 0, :max_len]
    return (counts > 0) & valid


def frames_fully_masked(mask: torch.Tensor, stride: int, frames: int) -> torch.Tensor:
    """(B, T_in) input mask -> (B, frames) mask of output frames whose `stride` input frames are all masked
    (a partly visible frame is not a prediction target)."""
    padded = nn.functional.pad(mask.float(), (0, frames * stride - mask.shape[1]))
    return padded.view(mask.shape[0], frames, stride).amin(-1).bool()


class MaskedFeatures(nn.Module):
    """Replaces masked frames by a learned embedding (`fill="learned"`) or by N(0, noise_std) noise (BEST-RQ)."""

    def __init__(self, n_mels: int, *, fill: str = "noise", noise_std: float = 0.1):
        super().__init__()
        if fill not in ("learned", "noise"):
            raise ValueError(f"fill must be 'learned' or 'noise', got {fill!r}")
        self.fill = fill
        self.noise_std = noise_std
        self.embedding = nn.Parameter(torch.zeros(n_mels)) if fill == "learned" else None

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            replacement = self.embedding.to(feats.dtype).expand_as(feats)
        else:
            replacement = torch.randn_like(feats) * self.noise_std
        return torch.where(mask[..., None], replacement, feats)
