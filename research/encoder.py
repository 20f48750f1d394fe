"""Log-mel -> convolutional subsampling -> Conformer: the speech encoder shared by the CTC baseline and LUISE."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn
from torchaudio.models import Conformer

from research.features import LogMel, SpecAugment, lengths_to_mask


class ConvSubsampling(nn.Module):
    """Two stride-2 Conv2d layers over (time, mel): 4x fewer frames (10 ms -> 40 ms)."""

    def __init__(self, *, n_mels: int, d_model: int, channels: int = 64):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.GELU(),
        )
        self.proj = nn.Linear(channels * ((n_mels + 3) // 4), d_model)

    @staticmethod
    def output_lengths(lens: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            lens = (lens - 1) // 2 + 1
        return lens

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(rearrange(feats, "b t f -> b 1 t f"))
        x = self.proj(rearrange(x, "b c t f -> b t (c f)"))
        return x, self.output_lengths(lens).clamp_max(x.shape[1])


@dataclass
class EncoderOutput:
    hidden: torch.Tensor  # (B, T, D) last layer
    lens: torch.Tensor  # (B,)
    layers: list[torch.Tensor] | None = None  # input to layer 1 followed by every layer's output


class ConformerEncoder(nn.Module):
    """Speech encoder over raw audio. `output_layers=True` also returns every layer (probing, teachers)."""

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        n_mels: int = 80,
        d_model: int = 144,
        num_layers: int = 4,
        num_heads: int = 4,
        ffn_dim: int = 576,
        kernel_size: int = 15,
        dropout: float = 0.1,
        subsampling_channels: int = 64,
        spec_augment: dict | None = None,
    ):
        super().__init__()
        self.d_model = d_model
        self.features = LogMel(sample_rate=sample_rate, n_mels=n_mels)
        self.spec_augment = SpecAugment(**spec_augment) if spec_augment else nn.Identity()
        self.subsampling = ConvSubsampling(n_mels=n_mels, d_model=d_model, channels=subsampling_channels)
        self.input_dropout = nn.Dropout(dropout)
        # GroupNorm instead of BatchNorm so padded frames do not leak into normalisation statistics.
        self.conformer = Conformer(
            input_dim=d_model,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            depthwise_conv_kernel_size=kernel_size,
            dropout=dropout,
            use_group_norm=True,
        )
        self.frame_rate = sample_rate / (self.features.hop_length * 4)

    @property
    def num_layers(self) -> int:
        return len(self.conformer.conformer_layers)

    def forward(
        self, audio: torch.Tensor, audio_lens: torch.Tensor, *, output_layers: bool = False
    ) -> EncoderOutput:
        feats, lens = self.features(audio, audio_lens)
        return self.encode_features(self.spec_augment(feats), lens, output_layers=output_layers)

    def encode_features(
        self, feats: torch.Tensor, lens: torch.Tensor, *, output_layers: bool = False
    ) -> EncoderOutput:
        """Log-mel (B, frames, n_mels) at 10 ms -> encoder output at 40 ms (LUISE masks the features first)."""
        x, lens = self.subsampling(feats, lens)
        x = rearrange(self.input_dropout(x), "b t d -> t b d")
        padding = ~lengths_to_mask(lens, x.shape[0])
        layers = [x] if output_layers else None
        # torchaudio's Conformer.forward returns only the last layer; iterate its layers to expose all of them.
        for layer in self.conformer.conformer_layers:
            x = layer(x, padding)
            if layers is not None:
                layers.append(x)
        to_batch_first = lambda t: rearrange(t, "t b d -> b t d")  # noqa: E731
        return EncoderOutput(
            hidden=to_batch_first(x),
            lens=lens,
            layers=[to_batch_first(t) for t in layers] if layers is not None else None,
        )
