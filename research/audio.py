"""Audio I/O shared by every component: read, check, down-mix and resample to a target rate.

torchaudio >= 2.9 delegates file I/O to torchcodec, so files are read with soundfile and only the DSP
(resampling) comes from torchaudio.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

log = logging.getLogger(__name__)


class BadAudioError(ValueError):
    """An audio file that cannot be used: unreadable, empty, non-finite or with unexpected channels."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


_logged_once: set[str] = set()


def log_once(key: str, message: str) -> None:
    """Log a conversion (resampling, down-mixing) the first time it happens, not once per file."""
    if key not in _logged_once:
        _logged_once.add(key)
        log.info(message)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a file as float32 of shape (channels, samples) in [-1, 1], with its sample rate."""
    path = Path(path)
    if not path.is_file():
        raise BadAudioError(path, "file not found")
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises several types for corrupt headers
        raise BadAudioError(path, f"unreadable ({error})") from error
    return data.T, int(sample_rate)


def load_audio(
    path: str | Path, *, sample_rate: int, downmix: bool = True, max_channels: int = 2
) -> torch.Tensor:
    """Load a file as a mono (1, samples) tensor at `sample_rate`, or raise BadAudioError saying why."""
    data, file_rate = read_audio(path)
    channels, samples = data.shape
    if samples == 0:
        raise BadAudioError(path, "zero-length audio")
    if not np.isfinite(data).all():
        raise BadAudioError(path, "non-finite samples (NaN or Inf)")
    if channels > 1:
        if not downmix or channels > max_channels:
            raise BadAudioError(
                path, f"{channels} channels (expected mono, down-mixing allowed up to {max_channels})"
            )
        log_once(f"downmix {channels}", f"down-mixing {channels}-channel audio to mono (first seen: {path})")
        data = data.mean(axis=0, keepdims=True)
    wave = torch.from_numpy(np.ascontiguousarray(data))
    if file_rate != sample_rate:
        log.debug(
            "resampling %s from %d Hz to %d Hz", path, file_rate, sample_rate
        )  # datamodules log it per manifest
        wave = AF.resample(wave, file_rate, sample_rate)
    return wave.clamp_(-1.0, 1.0)


def write_audio(path: str | Path, wave: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write a mono or (channels, samples) waveform as 16-bit PCM WAV, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = wave.detach().float().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    data = np.atleast_2d(data).T  # soundfile wants (samples, channels)
    sf.write(str(path), np.clip(data, -1.0, 1.0), sample_rate, subtype="PCM_16")
    return path


def audio_info(path: str | Path) -> tuple[float, int, int]:
    """(duration in seconds, sample rate, channels) from the header, without decoding the samples."""
    try:
        info = sf.info(str(path))
    except Exception as error:
        raise BadAudioError(path, f"unreadable ({error})") from error
    return info.frames / info.samplerate, int(info.samplerate), int(info.channels)
