"""Generator and discriminator losses of SpeechTokenizer (weights live in the config, not here)."""

from __future__ import annotations

import warnings

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

    def log_mel(self, scale: int, audio: torch.Tensor) -> torch.Tensor:
        return self.mels[scale](audio.float()).clamp_min(1e-5).log()

    def distance(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Unweighted L1 between log-mels at the largest scale: the usual codec 'mel distance' metric."""
        return F.l1_loss(self.log_mel(0, reconstruction), self.log_mel(0, target))

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = reconstruction.new_zeros(())
        for scale, weight in enumerate(self.weights):
            total = total + weight * F.l1_loss(
                self.log_mel(scale, reconstruction), self.log_mel(scale, target)
            )
        return total


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
