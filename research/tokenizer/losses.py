"""Generator and discriminator losses of SpeechTokenizer (weights live in the config, not here).

Padded batches: every loss of a batch is the mean over items of the item's loss on its valid samples only, so
a zero-padded batch gives the same losses as its items one by one. `per_item_mean` runs a loss on each item's
valid crop, batched over items of equal length (most training crops are full length)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchaudio.transforms as T
from torch import nn


class MultiScaleMelLoss(nn.Module):
    """Sum over scales of weight x L1 between log-mel spectrograms (80 mels, hop n_fft/4, window n_fft)."""

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        n_ffts: tuple[int, ...] = (1024, 512, 256, 128),
        weights: tuple[float, ...] = (45.0, 1.0, 1.0, 1.0),
        n_mels: int = 80,
    ):
        super().__init__()
        if len(n_ffts) != len(weights):
            raise ValueError("one weight per scale")
        with (
            warnings.catch_warnings()
        ):  # 80 mels over a 128-point FFT leave some filters empty, as in the paper
            warnings.simplefilter("ignore", UserWarning)
            self.mels = nn.ModuleList(
                T.MelSpectrogram(
                    sample_rate, n_fft=n, win_length=n, hop_length=n // 4, n_mels=n_mels, power=1.0
                )
                for n in n_ffts
            )
        self.weights = list(weights)
        # the shortest input every scale accepts (centred STFT, reflect padding of n_fft // 2)
        self.min_samples = max(n_ffts) // 2 + 1

    def log_mel(self, scale: int, audio: torch.Tensor) -> torch.Tensor:
        return self.mels[scale](audio.float()).clamp_min(1e-5).log()

    def distance(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Unweighted L1 between log-mels at the largest scale: the usual codec 'mel distance' metric."""
        return F.l1_loss(self.log_mel(0, reconstruction), self.log_mel(0, target))

    def forward(
        self, reconstruction: torch.Tensor, target: torch.Tensor, lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, 1, T) each; with `lens`, the mean over items of each item's loss on its valid samples."""
        if lens is not None:
            return per_item_mean(self, lens, reconstruction, target, min_samples=self.min_samples)
        total = reconstruction.new_zeros(())
        for scale, weight in enumerate(self.weights):
            total = total + weight * F.l1_loss(
                self.log_mel(scale, reconstruction), self.log_mel(scale, target)
            )
        return total


def group_by_length(*lens: torch.Tensor) -> list[tuple[torch.Tensor, tuple[int, ...]]]:
    """Items grouped by their lengths (one or more (B,) tensors): (item indices, lengths) per distinct value."""
    keys = torch.stack(lens, -1)
    values, inverse = torch.unique(keys, dim=0, return_inverse=True)
    return [
        ((inverse == k).nonzero().squeeze(1), tuple(int(v) for v in value)) for k, value in enumerate(values)
    ]


def valid_crop(x: torch.Tensor, index: torch.Tensor, length: int, min_samples: int = 0) -> torch.Tensor:
    """Items `index` of x (B, C, T) cut to `length` samples, zero-padded to `min_samples` if shorter."""
    crop = x[index, :, :length]
    return F.pad(crop, (0, min_samples - length)) if length < min_samples else crop


def per_item_mean(
    loss: Callable[..., torch.Tensor],
    lens: torch.Tensor,
    *tensors: torch.Tensor,
    min_samples: int = 0,
) -> torch.Tensor:
    """Mean over items of `loss` on each item's valid crop of every (B, C, T) tensor. `loss` must return the
    mean over the items it is given (each a tensor of any shape): groups of equal-length items run together.
    Items shorter than `min_samples` (the shortest input a discriminator or STFT accepts) are zero-padded to it."""
    total = 0
    for index, (length,) in group_by_length(lens.to(tensors[0].device)):
        crops = (valid_crop(x, index, length, min_samples) for x in tensors)
        total = total + loss(*crops) * len(index)
    return total / len(lens)


def masked_l1(reconstruction: torch.Tensor, target: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Mean over items of the L1 over each item's valid samples; (B, C, T) inputs, lens (B,)."""
    lens = lens.to(target.device)
    valid = torch.arange(target.shape[-1], device=target.device) < lens[:, None]  # (B, T)
    error = (reconstruction.float() - target.float()).abs().mean(1)  # (B, T)
    return (torch.where(valid, error, 0.0).sum(-1) / lens.clamp_min(1)).mean()


def lsgan_discriminator_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """Sum over discriminators of mean((1 - D(x))^2) + mean(D(G(z))^2), on the logits (last feature map)."""
    return sum(((1 - r[-1]) ** 2).mean() + (f[-1] ** 2).mean() for r, f in zip(real, fake, strict=True))


def lsgan_generator_loss(fake: list[list[torch.Tensor]]) -> torch.Tensor:
    return sum(((1 - f[-1]) ** 2).mean() for f in fake)


def feature_matching_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """Sum of L1 distances between real and generated intermediate feature maps (logits excluded)."""
    return sum(
        F.l1_loss(f_map, r_map.detach())
        for r, f in zip(real, fake, strict=True)
        for r_map, f_map in zip(r[:-1], f[:-1], strict=True)
    )
