"""The continuous audio representation a rectified flow generates: fixed-length (B, C, T) arrays, encoded from and
decoded back to audio (B, 1, samples).

Every clip is cut or padded to `seconds`: longer clips are cropped, shorter ones padded with silence, which the
generator learns to produce after the sound ends (TangoFlux pads its clips the same way). `mask_padding=True`
instead leaves the frames after a clip's end out of the loss (the `mask` of `encode`).

- `MelRepresentation` (default): log-mel magnitudes, normalised to about unit scale, decoded with torchaudio's
  InverseMelScale (least squares) and Griffin-Lim (phase from zeros, no RNG: a decode is deterministic).
- `CodecLatentRepresentation`: the continuous latents of the repository's SpeechTokenizer codec (its encoder's
  output before quantization), decoded by its decoder; the codec is frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio.transforms as T
from torch import nn

from research.features import lengths_to_mask


class FixedLengthRepresentation(nn.Module):
    """What a representation shares: the fixed window and the frame mask. Subclasses set `sample_rate`,
    `samples`, `frames`, `channels`, `hop_length` and implement `encode`, `decode` and `valid_frames`."""

    sample_rate: int
    samples: int
    frames: int
    channels: int
    hop_length: int
    mask_padding: bool

    def fit(
        self, audio: torch.Tensor, audio_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, 1, T') -> (B, 1, samples): zero (silence) past each clip's length, cropped or padded to the
        window; lengths clamped to it."""
        if audio_lens is None:
            audio_lens = torch.full((audio.shape[0],), audio.shape[-1], device=audio.device)
        audio = audio[..., : self.samples].float()
        audio = audio * lengths_to_mask(audio_lens, audio.shape[-1])[:, None, :]
        audio = F.pad(audio, (0, self.samples - audio.shape[-1]))
        return audio, audio_lens.clamp_max(self.samples)

    def frame_mask(self, audio_lens: torch.Tensor) -> torch.Tensor:
        """(B, T) True on the frames the loss covers: all, or with `mask_padding` those that cover the clip."""
        if not self.mask_padding:
            return torch.ones(len(audio_lens), self.frames, dtype=torch.bool, device=audio_lens.device)
        return lengths_to_mask(self.valid_frames(audio_lens).clamp(1, self.frames), self.frames)

    def valid_frames(self, audio_lens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MelRepresentation(FixedLengthRepresentation):
    """Log-mel magnitude spectrogram, (log(max(mel, floor)) - mean) / std, (B, n_mels, samples // hop + 1).

    The default mean and std (-7, 5) are those of FSDD digits at 16 kHz in a 1 s window (measured: -7.2, 5.0,
    silence padding included; silence sits at log(1e-5) = -11.5, i.e. -0.9 after normalisation)."""

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        hop_length: int = 256,
        n_mels: int = 80,
        f_min: float = 0.0,
        f_max: float | None = None,
        seconds: float = 1.0,
        log_floor: float = 1e-5,
        mean: float = -7.0,
        std: float = 5.0,
        griffin_lim_iters: int = 32,
        mask_padding: bool = False,
    ):
        super().__init__()
        self.sample_rate = sample_rate
        self.samples = round(seconds * sample_rate)
        self.hop_length = hop_length
        self.frames = self.samples // hop_length + 1
        self.channels = n_mels
        self.log_floor, self.mean, self.std = log_floor, mean, std
        self.mask_padding = mask_padding
        mel = {"sample_rate": sample_rate, "f_min": f_min, "f_max": f_max}
        # constant (zero) padding at the edges: silence padding is exact silence, the same alone or batched
        self.mel = T.MelSpectrogram(
            n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, power=1.0, pad_mode="constant", **mel
        )
        self.inverse_mel = T.InverseMelScale(n_stft=n_fft // 2 + 1, n_mels=n_mels, **mel)
        # 32 Griffin-Lim iterations (torchaudio's default; 32-64 is the usual range): about 25 ms per second of
        # audio on one CPU thread. rand_init=False: the phase starts at zero, so decoding draws no random numbers.
        self.griffin_lim = T.GriffinLim(
            n_fft=n_fft,
            hop_length=hop_length,
            power=1.0,
            n_iter=griffin_lim_iters,
            rand_init=False,
            length=self.samples,
        )

    def valid_frames(self, audio_lens: torch.Tensor) -> torch.Tensor:
        return audio_lens // self.hop_length + 1

    @torch.no_grad()
    def encode(self, audio: torch.Tensor, audio_lens: torch.Tensor | None = None):
        """audio (B, 1, T'), lengths (B,) -> x0 (B, n_mels, frames), mask (B, frames)."""
        audio, audio_lens = self.fit(audio, audio_lens)
        with torch.autocast(audio.device.type, enabled=False):
            log_mel = self.mel(audio.squeeze(1)).clamp_min(self.log_floor).log()
        return (log_mel - self.mean) / self.std, self.frame_mask(audio_lens)

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, n_mels, frames) -> audio (B, 1, samples) in [-1, 1]."""
        with torch.autocast(x.device.type, enabled=False):
            mel = (x.float() * self.std + self.mean).exp()
            # least squares on the CPU: CUDA's lstsq takes only tall full-rank systems, this one is wide
            inverse = self.inverse_mel.to("cpu")
            magnitude = inverse(mel.cpu()).to(x.device)
            wave = self.griffin_lim(magnitude)
        return wave.clamp(-1, 1).unsqueeze(1)


class CodecLatentRepresentation(FixedLengthRepresentation):
    """The frozen SpeechTokenizer codec's continuous latents, (latent - shift) / scale, (B, dimension,
    ceil(samples / hop)); decoded by the codec's decoder. `codec` is a `SpeechTokenizerCodec` (in configs:
    `experiments.core.checkpoints.load_submodule` with key `codec`). The codec stays in eval mode and frozen."""

    def __init__(
        self,
        *,
        codec: nn.Module,
        seconds: float = 1.0,
        scale: float = 1.0,
        shift: float = 0.0,
        mask_padding: bool = False,
    ):
        super().__init__()
        self.codec = codec.eval().requires_grad_(False)
        self.sample_rate = int(codec.sample_rate)
        self.hop_length = int(codec.hop_length)
        self.frames = -(-round(seconds * self.sample_rate) // self.hop_length)
        self.samples = self.frames * self.hop_length  # whole codec frames
        self.channels = int(codec.encoder.dimension)
        self.scale, self.shift = scale, shift
        self.mask_padding = mask_padding

    def train(self, mode: bool = True) -> CodecLatentRepresentation:
        super().train(mode)
        self.codec.eval()
        return self

    def valid_frames(self, audio_lens: torch.Tensor) -> torch.Tensor:
        return -(-audio_lens // self.hop_length)

    @torch.no_grad()
    def encode(self, audio: torch.Tensor, audio_lens: torch.Tensor | None = None):
        audio, audio_lens = self.fit(audio, audio_lens)
        latent = self.codec.encoder(audio).float()
        return (latent - self.shift) / self.scale, self.frame_mask(audio_lens)

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        audio = self.codec.decoder(x * self.scale + self.shift)[..., : self.samples]
        return audio.float().clamp(-1, 1)
