"""Residual vector quantization with EMA codebooks (SpeechTokenizer / EnCodec / SoundStream style).

Written here rather than reusing encodec's `ResidualVectorQuantization` because that one (a) takes each level's
residual from the straight-through output, which cuts the encoder's gradient from every later level's commitment
loss (EnCodec issue 25), (b) neither all-reduces EMA statistics nor syncs dead-code replacement across DDP ranks,
(c) has one codebook size for all levels, and (d) materialises a points x codes x dim tensor in k-means init.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from research.tokenizer.distributed import all_reduce_sum_, broadcast_


def squared_distances(
    x: torch.Tensor, y: torch.Tensor, x_sq: torch.Tensor | None = None, y_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, M) squared distances between the rows of x and y by the expansion ||x||^2 - 2 x.y + ||y||^2: one
    matmul instead of an N x M x D difference tensor, clamped at 0 against rounding. Pass the squared norms
    (x_sq, y_sq) where they are reused."""
    x_sq = x.pow(2).sum(-1) if x_sq is None else x_sq
    y_sq = y.pow(2).sum(-1) if y_sq is None else y_sq
    return torch.addmm(x_sq[:, None] + y_sq, x, y.T, alpha=-2).clamp_min_(0)


def nearest(
    x: torch.Tensor, codebook: torch.Tensor, *, chunk: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest code for each row of x (N, D) and its squared distance, by the matmul expansion, in
    chunks of rows so memory stays at chunk x codes. ||x||^2 is added after the argmin, which it cannot change."""
    codebook_sq = codebook.pow(2).sum(-1)
    indices, distances = [], []
    for rows in x.split(chunk):
        values, index = torch.addmm(codebook_sq, rows, codebook.T, alpha=-2).min(-1)
        indices.append(index)
        distances.append((values + rows.pow(2).sum(-1)).clamp_min_(0))
    return torch.cat(indices), torch.cat(distances)


def nearest_codes(x: torch.Tensor, codebook: torch.Tensor, *, chunk: int = 8192) -> torch.Tensor:
    return nearest(x, codebook, chunk=chunk)[0]


def kmeans_plus_plus(
    samples: torch.Tensor, k: int, *, generator: torch.Generator | None = None, projection_dim: int = 64
) -> torch.Tensor:
    """Indices of k seed rows by greedy k-means++ (as scikit-learn's): each step draws 2 + ln k candidates with
    probability proportional to the squared distance from the nearest seed so far and keeps the one that lowers
    their sum the most (plain k-means++, one draw a step, ends 8% higher on paper-size encoder frames even after
    50 Lloyd steps). Distances are taken in a random projection to `projection_dim` dimensions
    (Johnson-Lindenstrauss: close enough to sample by), so each of the k sequential steps reads a cache-sized
    N x 64 matrix instead of the N x D samples. The k indices are distinct; with N <= k, every row once, then
    random repeats."""
    n, dim = samples.shape
    if n <= k:
        picks = torch.cat(
            [torch.randperm(n, generator=generator), torch.randint(n, (k - n,), generator=generator)]
        )
        return picks.to(samples.device)
    points = samples
    if dim > projection_dim:
        projection = torch.randn(dim, projection_dim, generator=generator) * projection_dim**-0.5
        points = samples @ projection.to(samples)
    points_sq = points.pow(2).sum(-1)
    trials = 2 + int(math.log(k))
    picks = [int(torch.randint(n, (1,), generator=generator))]
    nearest_sq = squared_distances(points[picks], points, y_sq=points_sq)[0]
    for _ in range(1, k):
        nearest_sq[picks[-1]] = 0.0  # exactly 0, not a rounding residue: a chosen row is never drawn again
        weights = nearest_sq.cpu()
        if not weights.any():  # fewer distinct rows than k: any row not chosen yet
            weights = torch.ones(n).index_fill_(0, torch.tensor(picks), 0.0)
        drawn = torch.multinomial(weights, trials, replacement=True, generator=generator).to(samples.device)
        # (trials, N): the distances each candidate would leave, one matmul for all of them
        trial = torch.minimum(nearest_sq, squared_distances(points[drawn], points, y_sq=points_sq))
        best = int(trial.sum(1).argmin())
        picks.append(int(drawn[best]))
        nearest_sq = trial[best]
    return torch.tensor(picks, device=samples.device)


def kmeans(
    samples: torch.Tensor,
    k: int,
    *,
    iters: int,
    tolerance: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from greedy k-means++ seeds on (N, D) samples; returns centroids (k, D) and their cluster
    sizes (k,). At most `iters` Lloyd steps, stopping at the first assignment that lowers the mean squared
    distance by no more than `tolerance` (relative; 0: until it stops falling). Each step costs N x k x D, and
    from these seeds few pay: the RVQ's 1e-2 stops after 3 steps on paper-size encoder frames, 0.6% above the
    error 1e-3 reaches in 6."""
    # centred, the matmul expansion keeps its precision: encoder frames can sit far from the origin compared
    # with their spread (paper-size SEANet at random init: mean norm 0.26, mean distance to the mean 0.011)
    offset = samples.mean(0)
    samples = samples - offset
    centroids = samples[kmeans_plus_plus(samples, k, generator=generator)]
    counts = torch.zeros(k, device=samples.device)
    previous = math.inf
    for _ in range(iters):
        assign, distances = nearest(samples, centroids)
        counts = torch.bincount(assign, minlength=k).float()
        error = float(distances.mean())
        if error >= previous * (1 - tolerance):
            break
        previous = error
        sums = torch.zeros_like(centroids).index_add_(0, assign, samples)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids + offset, counts


class EMACodebook(nn.Module):
    """One VQ level: codebook updated by exponential moving averages of assigned frames (no gradient), k-means
    initialised on the first training batch, codes used less than `dead_threshold` (EMA count) replaced by random
    frames of the batch. All three are identical on every DDP rank: statistics are all-reduced, and k-means and
    replacement frames come from rank 0."""

    def __init__(
        self,
        *,
        dim: int,
        size: int,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        kmeans_iters: int = 50,
        kmeans_tolerance: float = 1e-2,
        kmeans_max_samples: int = 20000,
        dead_threshold: float = 2.0,
    ):
        super().__init__()
        self.dim, self.size = dim, size
        self.decay, self.epsilon = decay, epsilon
        self.kmeans_iters, self.kmeans_tolerance = kmeans_iters, kmeans_tolerance
        self.kmeans_max_samples = kmeans_max_samples
        self.dead_threshold = dead_threshold
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("embed", torch.randn(size, dim) * dim**-0.5)
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed_sum", self.embed.clone())

    @torch.no_grad()
    def init_from(self, frames: torch.Tensor) -> None:
        if frames.shape[0] > self.kmeans_max_samples:
            frames = frames[torch.randperm(frames.shape[0], device=frames.device)[: self.kmeans_max_samples]]
        centroids, counts = kmeans(
            frames.float(), self.size, iters=self.kmeans_iters, tolerance=self.kmeans_tolerance
        )
        self.embed.copy_(broadcast_(centroids))
        self.cluster_size.copy_(broadcast_(counts))
        self.embed_sum.copy_(self.embed * self.cluster_size[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def ema_update(self, frames: torch.Tensor, indices: torch.Tensor) -> None:
        counts = all_reduce_sum_(torch.bincount(indices, minlength=self.size).float())
        sums = all_reduce_sum_(torch.zeros_like(self.embed).index_add_(0, indices, frames.float()))
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.size * self.epsilon) * total  # Laplace
        self.embed.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def replace_dead_codes(self, frames: torch.Tensor) -> int:
        dead = self.cluster_size < self.dead_threshold
        count = int(dead.sum())
        if count == 0:
            return 0
        picks = torch.randint(frames.shape[0], (count,), device=frames.device)
        replacement = broadcast_(frames[picks].float().contiguous())
        self.embed[dead] = replacement
        self.cluster_size[dead] = self.dead_threshold
        self.embed_sum[dead] = replacement * self.dead_threshold
        return count

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return nearest_codes(frames.float(), self.embed)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.embed)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (N, D) -> quantized (N, D) (no gradient), indices (N,)."""
        if self.training and not bool(self.initialized):
            self.init_from(frames.detach())
        indices = self.encode(frames.detach())
        quantized = self.decode(indices)
        if self.training:
            self.ema_update(frames.detach(), indices)
            self.replace_dead_codes(frames.detach())
        return quantized.to(frames.dtype), indices


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (B, D, T), straight-through sum of the levels used
    codes: torch.Tensor  # (n_q, B, T)
    commitment_loss: torch.Tensor  # mean over levels of ||residual - sg(code)||^2
    levels: list[torch.Tensor]  # per level (B, D, T), straight-through; levels[0] is RVQ-1 (distillation)


class ResidualVQ(nn.Module):
    """n_q EMA codebooks applied to successive residuals; codebook sizes may differ per level.

    `quantizer_dropout`: in training, with this probability a batch uses only the first n (uniform in 1..n_q)
    levels, so the decoder learns to work from any prefix (bitrate scalability). The draw comes from a generator
    seeded by (`dropout_seed`, training-step count), not from the global RNG, so every DDP rank uses the same
    levels in a step (otherwise ranks would all-reduce different codebooks' statistics and hang) and a resumed
    run continues the sequence (the count is a buffer, saved in checkpoints).
    """

    def __init__(
        self,
        *,
        dim: int,
        codebook_sizes: list[int],
        quantizer_dropout: float = 0.0,
        dropout_seed: int = 0,
        **codebook_kwargs,
    ):
        super().__init__()
        self.dim = dim
        self.codebook_sizes = list(codebook_sizes)
        self.quantizer_dropout = quantizer_dropout
        self.dropout_seed = dropout_seed
        self.register_buffer("dropout_draws", torch.zeros((), dtype=torch.long))
        self.codebooks = nn.ModuleList(
            EMACodebook(dim=dim, size=s, **codebook_kwargs) for s in codebook_sizes
        )

    @property
    def n_q(self) -> int:
        return len(self.codebooks)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # checkpoints saved before the draw counter existed start it at 0
        state_dict.setdefault(f"{prefix}dropout_draws", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def levels_for_step(self, n_q: int | None) -> int:
        n_q = n_q or self.n_q
        if self.training and self.quantizer_dropout > 0:
            # Python's Random uses every bit of a large int seed (torch's CPU generator keeps only 32)
            rng = random.Random((self.dropout_seed << 64) + int(self.dropout_draws))
            self.dropout_draws += 1
            if rng.random() < self.quantizer_dropout:
                n_q = rng.randint(1, n_q)
        return n_q

    def forward(self, x: torch.Tensor, n_q: int | None = None) -> QuantizerOutput:
        """x (B, D, T) latent -> quantized latent, codes (n_q, B, T), commitment loss, per-level outputs."""
        batch = x.shape[0]
        residual = rearrange(x, "b d t -> (b t) d")
        total = torch.zeros_like(residual)
        codes, losses, levels = [], [], []
        for codebook in self.codebooks[: self.levels_for_step(n_q)]:
            quantized, indices = codebook(residual)
            losses.append(F.mse_loss(residual, quantized.detach()))
            levels.append(self._to_bdt(residual + (quantized - residual).detach(), batch))
            # EnCodec issue 25: the next residual comes from the code itself, so gradients of later levels'
            # commitment losses still reach the encoder.
            residual = residual - quantized.detach()
            total = total + quantized.detach()
            codes.append(rearrange(indices, "(b t) -> b t", b=batch))
        flat_x = rearrange(x, "b d t -> (b t) d")
        quantized_st = flat_x + (total - flat_x).detach()
        return QuantizerOutput(
            quantized=self._to_bdt(quantized_st, batch),
            codes=torch.stack(codes),
            commitment_loss=torch.stack(losses).mean(),
            levels=levels,
        )

    @staticmethod
    def _to_bdt(flat: torch.Tensor, batch: int) -> torch.Tensor:
        return rearrange(flat, "(b t) d -> b d t", b=batch)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """x (B, D, T) -> codes (n_q, B, T), without updating codebooks."""
        batch = x.shape[0]
        residual = rearrange(x, "b d t -> (b t) d")
        codes = []
        for codebook in self.codebooks[: n_q or self.n_q]:
            indices = codebook.encode(residual)
            residual = residual - codebook.decode(indices)
            codes.append(rearrange(indices, "(b t) -> b t", b=batch))
        return torch.stack(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (n, B, T) with n <= n_q -> latent (B, D, T) from the first n levels."""
        total = sum(codebook.decode(level) for codebook, level in zip(self.codebooks, codes, strict=False))
        return rearrange(total, "b t d -> b d t")


class SplitResidualVQ(nn.Module):
    """Mimi's split RVQ: a one-level semantic VQ and an acoustic RVQ quantize the same latent in parallel (the
    acoustic levels do not see the semantic residual). Each branch has its own 1x1 input and output projection,
    and the decoder gets the sum of both outputs. Codes are [semantic, acoustic...]."""

    def __init__(
        self,
        *,
        dim: int,
        codebook_sizes: list[int],
        quantizer_dropout: float = 0.0,
        dropout_seed: int = 0,
        **codebook_kwargs,
    ):
        super().__init__()
        self.codebook_sizes = list(codebook_sizes)
        self.semantic = ResidualVQ(dim=dim, codebook_sizes=codebook_sizes[:1], **codebook_kwargs)
        self.acoustic = ResidualVQ(
            dim=dim,
            codebook_sizes=codebook_sizes[1:],
            quantizer_dropout=quantizer_dropout,
            dropout_seed=dropout_seed,
            **codebook_kwargs,
        )
        self.project_in = nn.ModuleDict({k: nn.Conv1d(dim, dim, 1) for k in ("semantic", "acoustic")})
        self.project_out = nn.ModuleDict({k: nn.Conv1d(dim, dim, 1) for k in ("semantic", "acoustic")})

    @property
    def n_q(self) -> int:
        return 1 + self.acoustic.n_q

    def forward(self, x: torch.Tensor, n_q: int | None = None) -> QuantizerOutput:
        n_q = n_q or self.n_q
        semantic = self.semantic(self.project_in["semantic"](x))
        out = self.project_out["semantic"]
        levels = [out(level) for level in semantic.levels]
        quantized, codes, losses = out(semantic.quantized), [semantic.codes], [semantic.commitment_loss]
        if n_q > 1:
            acoustic = self.acoustic(self.project_in["acoustic"](x), n_q - 1)
            quantized = quantized + self.project_out["acoustic"](acoustic.quantized)
            levels += [self.project_out["acoustic"](level) for level in acoustic.levels]
            codes.append(acoustic.codes)
            losses += [acoustic.commitment_loss] * acoustic.codes.shape[0]  # weight by level count
        return QuantizerOutput(
            quantized=quantized,
            codes=torch.cat(codes),
            commitment_loss=torch.stack(losses).mean(),
            levels=levels,
        )

    @torch.no_grad()
    def encode(self, x: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        n_q = n_q or self.n_q
        codes = [self.semantic.encode(self.project_in["semantic"](x))]
        if n_q > 1:
            codes.append(self.acoustic.encode(self.project_in["acoustic"](x), n_q - 1))
        return torch.cat(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        latent = self.project_out["semantic"](self.semantic.decode(codes[:1]))
        if codes.shape[0] > 1:
            latent = latent + self.project_out["acoustic"](self.acoustic.decode(codes[1:]))
        return latent
