"""GAN discriminators of SpeechTokenizer, reused from the packages: DAC's multi-period (MPD) and multi-scale
(MSD) discriminators and encodec's multi-scale STFT discriminator. Every sub-discriminator yields a list of
feature maps whose last entry is its logits."""

from __future__ import annotations

import torch
from dac.model.discriminator import MPD, MSD
from encodec.msstftd import MultiScaleSTFTDiscriminator
from torch import nn


class CodecDiscriminator(nn.Module):
    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        periods: tuple[int, ...] = (2, 3, 5, 7, 11),
        msd_rates: tuple[int, ...] = (1, 2, 4),
        stft_filters: int = 32,
        stft_n_ffts: tuple[int, ...] = (2048, 1024, 512, 256, 128),
    ):
        super().__init__()
        self.mpd = nn.ModuleList(MPD(p) for p in periods)
        self.msd = nn.ModuleList(MSD(rate, sample_rate=sample_rate) for rate in msd_rates)
        self.stft = (
            MultiScaleSTFTDiscriminator(
                filters=stft_filters,
                n_ffts=list(stft_n_ffts),
                hop_lengths=[n // 4 for n in stft_n_ffts],
                win_lengths=list(stft_n_ffts),
            )
            if stft_n_ffts
            else None
        )
        # the shortest input every sub-discriminator accepts: the STFTs are not centred (n_fft samples at least)
        # and MPD reflect-pads to a multiple of its period
        self.min_samples = max((*stft_n_ffts, *(p + 1 for p in periods)), default=1)

    def forward(self, audio: torch.Tensor) -> list[list[torch.Tensor]]:
        """audio (B, 1, T) -> one list of feature maps per sub-discriminator, logits last."""
        outputs = [d(audio) for d in [*self.mpd, *self.msd]]
        if self.stft is not None:
            logits, fmaps = self.stft(audio)
            outputs += [[*fmap, logit] for logit, fmap in zip(logits, fmaps, strict=True)]
        return outputs
