"""SpeechTokenizer generator: SEANet encoder with a 2-layer BiLSTM -> RVQ -> SEANet decoder with an LSTM.
RVQ-1's output is projected to the teacher dimension for semantic distillation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from encodec.modules.conv import SConv1d
from encodec.modules.seanet import SEANetDecoder, SEANetEncoder
from torch import nn

from research.tokenizer.quantizer import ResidualVQ, SplitResidualVQ


def detach_weight_norm_(module: nn.Module) -> nn.Module:
    """encodec's and DAC's convs use the legacy `weight_norm`, which keeps the computed `weight` as a non-leaf
    tensor that cannot be pickled (spawned DDP workers). Detaching it is harmless: the pre-forward hook recomputes
    it from weight_g and weight_v."""
    for sub in module.modules():
        weight = sub.__dict__.get("weight")
        if isinstance(weight, torch.Tensor) and weight.grad_fn is not None:
            sub.weight = weight.detach()
    return module


def zero_conv_biases_(module: nn.Module) -> nn.Module:
    """PyTorch's default conv init scales the signal by about 1/sqrt(3) per layer but draws biases up to
    1/sqrt(fan_in), so at init SEANet's output is a bias constant that barely depends on its input (measured
    at CPU size: a DC offset, 0.6% change for different latents) and a small codec stalls at the mean spectrum. Zero biases
    (DAC's init does the same) keep the output a function of the input from the first step."""
    for sub in module.modules():
        if isinstance(sub, nn.Conv1d | nn.ConvTranspose1d) and sub.bias is not None:
            nn.init.zeros_(sub.bias)
    return module


class BiLSTM(nn.Module):
    """Bidirectional LSTM over (B, C, T) with a skip connection (input repeated to the 2C outputs)."""

    def __init__(self, dim: int, num_layers: int = 2):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x, "b c t -> t b c")
        y, _ = self.lstm(x)
        return rearrange(y + x.repeat(1, 1, 2), "t b c -> b c t")


class BiLSTMSEANetEncoder(SEANetEncoder):
    """encodec's SEANet encoder offers only a unidirectional LSTM; SpeechTokenizer's encoder uses a BiLSTM, so
    build encodec's encoder without LSTM, insert one before the last activation, and widen the last conv."""

    def __init__(self, *, lstm: int = 2, **kwargs):
        super().__init__(lstm=0, **kwargs)
        *body, activation, last_conv = list(self.model)
        width = last_conv.conv.conv.in_channels
        new_last = SConv1d(
            2 * width,
            self.dimension,
            last_conv.conv.conv.kernel_size[0],
            norm=kwargs.get("norm", "weight_norm"),
            causal=kwargs.get("causal", False),
            pad_mode=kwargs.get("pad_mode", "reflect"),
        )
        self.model = nn.Sequential(*body, BiLSTM(width, lstm), activation, new_last)


@dataclass
class CodecOutput:
    audio: torch.Tensor  # (B, 1, T) reconstruction, same length as the input
    codes: torch.Tensor  # (n_q, B, frames)
    commitment_loss: torch.Tensor
    semantic: torch.Tensor  # (B, frames, semantic_dim): projected RVQ-1 output, the distillation student
    latent: torch.Tensor  # (B, dim, frames) encoder output before quantization


class SpeechTokenizerCodec(nn.Module):
    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        n_filters: int = 64,
        dimension: int = 1024,
        strides: tuple[int, ...] = (8, 5, 4, 2),
        lstm_layers: int = 2,
        n_residual_layers: int = 1,
        codebook_sizes: tuple[int, ...] = (1024,) * 8,
        semantic_dim: int = 768,
        split_rvq: bool = False,
        quantizer: dict | None = None,
        zero_bias_init: bool = True,
    ):
        super().__init__()
        self.sample_rate = sample_rate
        seanet = {
            "n_filters": n_filters,
            "dimension": dimension,
            "ratios": list(strides),
            "n_residual_layers": n_residual_layers,
            "lstm": lstm_layers,
        }
        self.encoder = BiLSTMSEANetEncoder(**seanet)
        self.decoder = SEANetDecoder(**seanet)
        if zero_bias_init:  # False reproduces the public trainer's default init
            zero_conv_biases_(self.encoder)
            zero_conv_biases_(self.decoder)
        quantizer_class = SplitResidualVQ if split_rvq else ResidualVQ
        self.quantizer = quantizer_class(
            dim=dimension, codebook_sizes=list(codebook_sizes), **(quantizer or {})
        )
        self.semantic_projection = nn.Linear(dimension, semantic_dim) if semantic_dim else nn.Identity()
        self.hop_length = int(np.prod(strides))
        self.frame_rate = sample_rate / self.hop_length

    @property
    def n_q(self) -> int:
        return self.quantizer.n_q

    @property
    def bitrate(self) -> float:
        """Bits per second with all levels: frame rate x sum of log2(codebook size) over levels."""
        return self.frame_rate * float(sum(np.log2(size) for size in self.quantizer.codebook_sizes))

    def frames(self, samples: int | torch.Tensor) -> int | torch.Tensor:
        return -(-samples // self.hop_length)

    def _pad(self, audio: torch.Tensor) -> torch.Tensor:
        return F.pad(audio, (0, self.frames(audio.shape[-1]) * self.hop_length - audio.shape[-1]))

    def quantize(self, latent: torch.Tensor, n_q: int | None = None):
        # Code distances, EMA statistics and k-means in float32 even under bf16/16-bit mixed precision.
        with torch.autocast(latent.device.type, enabled=False):
            return self.quantizer(latent.float(), n_q)

    def forward(self, audio: torch.Tensor, n_q: int | None = None) -> CodecOutput:
        latent = self.encoder(self._pad(audio))
        quantized = self.quantize(latent, n_q)
        reconstruction = self.decoder(quantized.quantized)[..., : audio.shape[-1]]
        semantic = self.semantic_projection(rearrange(quantized.levels[0], "b d t -> b t d"))
        return CodecOutput(reconstruction, quantized.codes, quantized.commitment_loss, semantic, latent)

    @torch.no_grad()
    def encode(self, audio: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """audio (B, 1, T) -> codes (n_q, B, ceil(T / hop))."""
        latent = self.encoder(self._pad(audio))
        with torch.autocast(latent.device.type, enabled=False):
            return self.quantizer.encode(latent.float(), n_q)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (n, B, frames) -> audio (B, 1, frames * hop), from the first n levels."""
        return self.decoder(self.quantizer.decode(codes))

    @torch.no_grad()
    def resynthesize(self, audio: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """Audio (B, 1, T) through the first n_q levels (all by default), same length out."""
        return self.decode(self.encode(audio, n_q))[..., : audio.shape[-1]]

    @torch.no_grad()
    def convert_voice(self, content: torch.Tensor, voice: torch.Tensor) -> torch.Tensor:
        """RVQ-1 (content) of `content` with RVQ-2..n (timbre, detail) of `voice`; (1, 1, T) each."""
        return self.decode(swap_first_level(self.encode(content), self.encode(voice)))


def swap_first_level(content: torch.Tensor, voice: torch.Tensor) -> torch.Tensor:
    """Codes with RVQ-1 from `content` and RVQ-2..n from `voice` ((n_q, B, T) each, cut to the shorter)."""
    frames = min(content.shape[-1], voice.shape[-1])
    return torch.cat([content[:1, ..., :frames], voice[1:, ..., :frames]])
