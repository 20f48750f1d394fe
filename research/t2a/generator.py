"""The velocity model: a small DiT over a fixed-length continuous audio representation (B, C, T), one token per
frame.

- input projection C -> d_model, plus sinusoidal frame positions;
- time: sinusoidal embedding of t -> MLP;
- conditioning, two paths:
  * token conditioning (text): cross-attention from every frame to the text encoder's token states, and the
    masked mean of those states added to the time embedding for the adaLN modulation. Cross-attention rather
    than adaLN from a pooled vector alone, because a caption's parts are separate facts ("george", "greek accent",
    "seven") that different frames need: the digit word decides the frames' content, the speaker their timbre;
    one pooled vector blurs them. The pooled vector is kept as a cheap global summary in the modulation;
  * frame conditioning (codes, the CosyVoice / Baichuan-Audio token-to-mel decoder): states already aligned to
    the frames, projected and added to the input tokens (the same as concatenating them to x_t as channels
    before a linear input layer, as CosyVoice does);
- adaLN-zero blocks (DiT): LayerNorms without affine, shift / scale / gate per block from the conditioning
  vector, the modulation layer zero-initialised, so every block starts as the identity;
- output: adaLN-modulated norm -> linear to C, zero-initialised (the model predicts velocity 0 at the start);
- a learned null condition (null token state, null frame state) replaces the condition of the samples in `drop`
  (condition dropout in training with probability `cond_dropout`; the unconditional branch of classifier-free
  guidance in sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass
class Condition:
    """What the generator is conditioned on, for a batch of B samples.

    tokens: (B, L, D) states to cross-attend to (text), with token_mask (B, L), True on valid tokens.
    frames: (B, T, D) states aligned to the generator's frames (codes), or None.
    """

    tokens: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    frames: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        present = self.tokens if self.tokens is not None else self.frames
        return present.shape[0]

    def select(self, rows: torch.Tensor | list[int]) -> Condition:
        """The condition of samples `rows` (index tensor or list), e.g. to repeat a prompt N times."""
        pick = lambda value: None if value is None else value[rows]  # noqa: E731
        return Condition(pick(self.tokens), pick(self.token_mask), pick(self.frames))

    def detach(self) -> Condition:
        pick = lambda value: None if value is None else value.detach()  # noqa: E731
        return replace(self, tokens=pick(self.tokens), frames=pick(self.frames))


def sinusoidal_embedding(values: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) values -> (N, dim) [cos | sin] features at geometrically spaced frequencies (dim even)."""
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half
    )
    angles = values.float()[:, None] * frequencies[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, T, D) with per-sample shift, scale (B, D)."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class Attention(nn.Module):
    """Multi-head attention from `x` (B, T, D) to `context` (B, L, Dc) (itself when None), `mask` (B, L) True on
    the keys that may be attended to."""

    def __init__(self, dim: int, num_heads: int, *, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"d_model {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        context = x if context is None else context
        q = rearrange(self.query(x), "b t (h d) -> b h t d", h=self.num_heads)
        k, v = rearrange(self.key_value(context), "b l (two h d) -> two b h l d", two=2, h=self.num_heads)
        attn_mask = None if mask is None else mask[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return self.out(rearrange(y, "b h t d -> b t (h d)"))


class DiTBlock(nn.Module):
    """adaLN-zero self-attention and MLP, with (ungated, unmodulated, as PixArt-alpha) cross-attention between."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        context_dim: int | None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, dropout=dropout)
        self.cross = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross = Attention(dim, num_heads, context_dim=context_dim, dropout=dropout)
        self.norm_mlp = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.modulation[-1].weight)
        nn.init.zeros_(self.modulation[-1].bias)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(c).chunk(6, dim=-1)
        x = x + gate_a[:, None, :] * self.attn(modulate(self.norm_attn(x), shift_a, scale_a))
        if self.cross is not None and context is not None:
            x = x + self.cross(self.norm_cross(x), context, mask)
        return x + gate_m[:, None, :] * self.mlp(modulate(self.norm_mlp(x), shift_m, scale_m))


class DiT(nn.Module):
    """Velocity model v(x_t, t, condition): (B, C, T), (B,), Condition -> (B, C, T)."""

    def __init__(
        self,
        *,
        in_channels: int = 80,
        cond_dim: int = 128,
        d_model: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        cond_dropout: float = 0.1,
        token_conditioning: bool = True,
        frame_conditioning: bool = False,
        time_scale: float = 1000.0,
    ):
        super().__init__()
        if not token_conditioning and not frame_conditioning:
            raise ValueError("the generator needs token_conditioning or frame_conditioning")
        self.in_channels = in_channels
        self.d_model = d_model
        self.cond_dropout = cond_dropout
        self.time_scale = time_scale  # t in [0, 1] spread over the embedding's frequencies as DiT's 0..1000
        self.input = nn.Linear(in_channels, d_model)
        self.time_mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        context_dim = cond_dim if token_conditioning else None
        self.pooled = nn.Linear(cond_dim, d_model) if token_conditioning else None
        self.null_token = nn.Parameter(torch.randn(cond_dim) * 0.02) if token_conditioning else None
        self.frame_input = nn.Linear(cond_dim, d_model) if frame_conditioning else None
        self.null_frame = nn.Parameter(torch.randn(cond_dim) * 0.02) if frame_conditioning else None
        self.blocks = nn.ModuleList(
            DiTBlock(d_model, num_heads, context_dim=context_dim, mlp_ratio=mlp_ratio, dropout=dropout)
            for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 2 * d_model))
        self.output = nn.Linear(d_model, in_channels)
        for layer in (self.final_modulation[-1], self.output):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def drop_mask(self, batch: int, *, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch,) bool, True with probability `cond_dropout`: the samples trained unconditionally."""
        draws = torch.rand(batch, generator=generator) if generator is not None else torch.rand(batch)
        return (draws < self.cond_dropout).to(device)

    def apply_null(self, cond: Condition, drop: torch.Tensor | None) -> Condition:
        """`cond` with the samples in `drop` (B,) bool replaced by the learned null condition: their token
        states become one valid null token (the rest masked), their frame states the null frame state."""
        if drop is None or not bool(drop.any()):
            return cond
        tokens, mask, frames = cond.tokens, cond.token_mask, cond.frames
        if tokens is not None:
            keep = ~drop[:, None, None]
            tokens = torch.where(keep, tokens, self.null_token.to(tokens.dtype))
            first = torch.zeros_like(mask)
            first[:, 0] = True
            mask = torch.where(drop[:, None], first, mask)
        if frames is not None:
            frames = torch.where(~drop[:, None, None], frames, self.null_frame.to(frames.dtype))
        return Condition(tokens, mask, frames)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Condition, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C, T), t (B,) in [0, 1], cond for B samples; `drop` (B,) bool: use the null condition there."""
        cond = self.apply_null(cond, drop)
        h = self.input(rearrange(x, "b c t -> b t c"))
        frames = torch.arange(h.shape[1], device=h.device)
        h = h + sinusoidal_embedding(frames, self.d_model).to(h.dtype)
        c = self.time_mlp(sinusoidal_embedding(t * self.time_scale, self.d_model).to(h.dtype))
        context = mask = None
        if self.pooled is not None:
            if cond.tokens is None:
                raise ValueError("this generator cross-attends to token states: the condition has none")
            context, mask = cond.tokens, cond.token_mask
            weights = mask[..., None].to(context.dtype)
            c = c + self.pooled((context * weights).sum(1) / weights.sum(1).clamp_min(1))
        if self.frame_input is not None:
            if cond.frames is None or cond.frames.shape[1] != h.shape[1]:
                raise ValueError(f"this generator needs frame states aligned to its {h.shape[1]} frames")
            h = h + self.frame_input(cond.frames)
        for block in self.blocks:
            h = block(h, c, context, mask)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        return rearrange(self.output(modulate(self.final_norm(h), shift, scale)), "b t c -> b c t")
