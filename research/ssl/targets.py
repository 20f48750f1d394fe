"""Prediction targets of LUISE iterations: random-projection labels (iteration 1) and k-means labels (k+1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def stack_frames(feats: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, T, F) -> (B, ceil(T / stride), stride * F), zero-padded at the end: the 40 ms frames that the encoder's
    two stride-2 convolutions produce from 10 ms features."""
    frames = -(-feats.shape[1] // stride)
    padded = F.pad(feats, (0, 0, 0, frames * stride - feats.shape[1]))
    return rearrange(padded, "b (t s) f -> b t (s f)", s=stride)


class RandomProjectionQuantizer(nn.Module):
    """BEST-RQ labels: stacked clean frames -> frozen Xavier projection -> L2-normalised -> nearest of a frozen,
    L2-normalised random codebook (one per target codebook). Written here rather than taken from
    vector-quantize-pytorch, whose version adds a LayerNorm and draws from the global RNG; this one draws from its
    own `seed`, so labels are reproducible and the same on every rank."""

    def __init__(
        self,
        *,
        input_dim: int,
        codebook_dim: int = 16,
        codebook_size: int = 8192,
        num_codebooks: int = 1,
        seed: int = 0,
    ):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        projection = torch.empty(num_codebooks, input_dim, codebook_dim)
        bound = (6.0 / (input_dim + codebook_dim)) ** 0.5  # Xavier uniform
        projection.uniform_(-bound, bound, generator=generator)
        codebooks = torch.randn(num_codebooks, codebook_size, codebook_dim, generator=generator)
        self.register_buffer("projection", projection)
        self.register_buffer("codebooks", F.normalize(codebooks, dim=-1))
        self.num_codebooks, self.codebook_size = num_codebooks, codebook_size

    @torch.no_grad()
    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        """(B, T, input_dim) -> labels (B, T, num_codebooks), int64. Always in float32, also under autocast:
        bf16 rounding of the projection or the cosines flips the argmax of near-ties (a few % of the labels),
        so the targets would depend on the precision setting of the run."""
        with torch.autocast(device_type=stacked.device.type, enabled=False):
            projection, codebooks = self.projection.float(), self.codebooks.float()
            projected = F.normalize(torch.einsum("btf,cfd->btcd", stacked.float(), projection), dim=-1)
            # nearest unit vector = largest cosine
            return torch.einsum("btcd,ckd->btck", projected, codebooks).argmax(-1)


class MultiSoftmaxHead(nn.Module):
    """One linear softmax head per target codebook: hidden (B, T, D) -> logits (B, T, C, K)."""

    def __init__(self, d_model: int, *, num_codebooks: int, codebook_size: int):
        super().__init__()
        self.proj = nn.Linear(d_model, num_codebooks * codebook_size)
        self.num_codebooks = num_codebooks

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(hidden), "b t (c k) -> b t c k", c=self.num_codebooks)


def masked_prediction_loss(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy averaged over codebooks and the frames where `mask` (masked and not padding) is True;
    returns (loss, accuracy). Frames outside the mask take no part in the loss or its gradient."""
    selected_logits, selected_labels = logits[mask].float(), labels[mask]  # (N, C, K), (N, C)
    if selected_labels.numel() == 0:
        zero = logits.sum() * 0.0  # keeps the graph (DDP) while contributing nothing
        return zero, zero.detach()
    loss = F.cross_entropy(rearrange(selected_logits, "n c k -> (n c) k"), selected_labels.flatten())
    accuracy = (selected_logits.argmax(-1) == selected_labels).float().mean()
    return loss, accuracy


def label_perplexity(labels: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """exp(entropy) of the label histogram: how many labels are in use (codebook_size at most)."""
    counts = torch.bincount(labels.flatten(), minlength=codebook_size).float()
    probs = counts / counts.sum().clamp_min(1)
    return torch.exp(-(probs * probs.clamp_min(1e-12).log()).sum())
