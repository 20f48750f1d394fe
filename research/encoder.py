"""Log-mel -> convolutional subsampling -> Conformer: the speech encoder shared by the CTC baseline and LUISE."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn
from torchaudio.models import Conformer

from research.features import LogMel, SpecAugment, lengths_to_mask

SUBSAMPLING = 4  # 10 ms features -> 40 ms encoder frames (two stride-2 convolutions)


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

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Zero what lies beyond each length before every convolution, as its own zero padding would in an
        # unbatched call: valid frames then do not depend on how much padding the batch adds.
        x = rearrange(feats, "b t f -> b 1 t f")
        for index in (0, 2):
            x = x * lengths_to_mask(lens, x.shape[2])[:, None, :, None]
            x = self.conv[index + 1](self.conv[index](x))
            lens = (lens - 1) // 2 + 1  # kernel 3, stride 2, padding 1
        x = self.proj(rearrange(x, "b c t f -> b t (c f)"))
        return x, lens.clamp_max(x.shape[1])


@dataclass
class EncoderOutput:
    hidden: torch.Tensor  # (B, T, D) last layer
    lens: torch.Tensor  # (B,)
    layers: list[torch.Tensor] | None = None  # input to layer 1 followed by every layer's output


def masked_group_norm(norm: nn.GroupNorm, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """GroupNorm(1 group) of (B, C, T) with statistics over the valid frames only (`valid`: (B, T))."""
    weights = valid[:, None, :].to(x.dtype)
    count = weights.sum((1, 2), keepdim=True).clamp_min(1) * x.shape[1]
    mean = (x * weights).sum((1, 2), keepdim=True) / count
    var = (((x - mean) * weights) ** 2).sum((1, 2), keepdim=True) / count
    x = (x - mean) / torch.sqrt(var + norm.eps)
    return x * norm.weight[None, :, None] + norm.bias[None, :, None]


def padding_aware_convolution(module: nn.Module, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """torchaudio's Conformer convolution module on (B, T, D) with its own weights, except that padded frames
    are zeroed before the depthwise convolution and left out of the GroupNorm statistics (torchaudio lets both
    see the padding, so a frame's output changed with the length of the longest utterance in its batch)."""
    pointwise, glu, depthwise, norm, activation, pointwise_out, dropout = module.sequential
    x = glu(pointwise(module.layer_norm(x).transpose(1, 2))) * valid[:, None, :].to(x.dtype)
    x = masked_group_norm(norm, depthwise(x), valid)
    return dropout(pointwise_out(activation(x))).transpose(1, 2)


def conformer_layer(layer: nn.Module, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """torchaudio's ConformerLayer.forward on (T, B, D), with the padding-aware convolution module."""

    def convolution(x: torch.Tensor) -> torch.Tensor:
        out = padding_aware_convolution(layer.conv_module, x.transpose(0, 1), ~padding)
        return x + out.transpose(0, 1)

    x = x + 0.5 * layer.ffn1(x)
    if layer.convolution_first:
        x = convolution(x)
    attended = layer.self_attn_layer_norm(x)
    attended, _ = layer.self_attn(attended, attended, attended, key_padding_mask=padding, need_weights=False)
    x = x + layer.self_attn_dropout(attended)
    if not layer.convolution_first:
        x = convolution(x)
    x = x + 0.5 * layer.ffn2(x)
    return layer.final_layer_norm(x)


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
        # GroupNorm instead of BatchNorm: per-utterance statistics, which conformer_layer keeps to valid frames.
        self.conformer = Conformer(
            input_dim=d_model,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            depthwise_conv_kernel_size=kernel_size,
            dropout=dropout,
            use_group_norm=True,
        )
        self.frame_rate = sample_rate / (self.features.hop_length * SUBSAMPLING)

    @property
    def num_layers(self) -> int:
        return len(self.conformer.conformer_layers)

    def reset_top_layers(self, count: int) -> None:
        """Re-initialise the last `count` Conformer layers: before fine-tuning a pretrained encoder on little data,
        the top layers, specialised to the pretext targets, may serve better fresh (Pasad et al., 2021)."""
        if not 0 <= count <= self.num_layers:
            raise ValueError(f"cannot reset {count} of {self.num_layers} layers")
        for layer in self.conformer.conformer_layers[self.num_layers - count :]:
            for module in layer.modules():
                # nn.MultiheadAttention names its initialiser _reset_parameters
                reset = getattr(module, "reset_parameters", None) or getattr(
                    module, "_reset_parameters", None
                )
                if callable(reset):
                    reset()

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
            x = conformer_layer(layer, x, padding)
            if layers is not None:
                layers.append(x)
        to_batch_first = lambda t: rearrange(t, "t b d -> b t d")  # noqa: E731
        return EncoderOutput(
            hidden=to_batch_first(x),
            lens=lens,
            layers=[to_batch_first(t) for t in layers] if layers is not None else None,
        )
