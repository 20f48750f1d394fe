"""Log-mel features with explicit lengths, shared by the CTC baseline, LUISE and the tokenizer losses."""

from __future__ import annotations

import torch
import torchaudio.transforms as T
from torch import nn


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Boolean (B, T) mask, True on valid positions."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class LogMel(nn.Module):
    """80-d log-mel at 25 ms windows / 10 ms hop (the BEST-RQ / LUISE front end), normalised per utterance."""

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        n_mels: int = 80,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        normalize: bool = True,
    ):
        super().__init__()
        self.hop_length = int(sample_rate * hop_ms / 1000)
        win_length = int(sample_rate * win_ms / 1000)
        n_fft = 1 << (win_length - 1).bit_length()
        self.mel = T.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win_length,
            hop_length=self.hop_length,
            n_mels=n_mels,
            center=True,
            # zeros past the end, as a batch pads: an utterance's last frames are the same alone or batched
            # (the default reflection would mirror its own samples alone but read the padding in a batch)
            pad_mode="constant",
        )
        self.normalize = normalize

    def output_lengths(self, audio_lens: torch.Tensor) -> torch.Tensor:
        return audio_lens // self.hop_length + 1

    def forward(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, 1, T) -> features (B, frames, n_mels), frame lengths (B,)."""
        with torch.autocast(device_type=audio.device.type, enabled=False):
            feats = self.mel(audio.squeeze(1).float()).clamp_min(1e-10).log().transpose(1, 2)
        lens = self.output_lengths(audio_lens).clamp_max(feats.shape[1])
        mask = lengths_to_mask(lens, feats.shape[1]).unsqueeze(-1)
        if self.normalize:
            count = lens.clamp_min(1)[:, None, None]
            mean = (feats * mask).sum(1, keepdim=True) / count
            var = ((feats - mean) ** 2 * mask).sum(1, keepdim=True) / count
            feats = (feats - mean) / (var.sqrt() + 1e-5)
        return feats * mask, lens


class SpecAugment(nn.Module):
    """Frequency and time masking on (B, frames, n_mels) features, active only in training mode."""

    def __init__(
        self, *, freq_masks: int = 2, freq_width: int = 15, time_masks: int = 2, time_width: int = 20
    ):
        super().__init__()
        self.freq = nn.ModuleList(T.FrequencyMasking(freq_width, iid_masks=True) for _ in range(freq_masks))
        self.time = nn.ModuleList(T.TimeMasking(time_width, iid_masks=True) for _ in range(time_masks))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return feats
        spec = feats.transpose(1, 2).unsqueeze(1)  # (B, 1, n_mels, frames) as torchaudio expects
        for mask in [*self.freq, *self.time]:
            spec = mask(spec)
        return spec.squeeze(1).transpose(1, 2)
