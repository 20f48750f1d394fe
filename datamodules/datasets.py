"""Datasets over a manifest: random fixed-length crops (codecs, SSL) or whole utterances (ASR, captions).

Bad audio never raises mid-epoch unless strict: the item comes back as None, is warned about once per file and
counted by the collate function. Randomness (crop offsets) is derived from (seed, epoch, index), so it does not
depend on worker count or on resuming.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.manifest import Manifest
from research.audio import BadAudioError, load_audio

log = logging.getLogger(__name__)

PASS_THROUGH = ("id", "text", "speaker", "lang", "caption")


class ManifestAudioDataset(Dataset):
    def __init__(
        self,
        manifest: Manifest,
        *,
        sample_rate: int,
        crop_seconds: float | None = None,
        strict: bool = False,
        downmix: bool = True,
        seed: int = 0,
        extra_fields: tuple[str, ...] = (),
    ):
        self.manifest = manifest
        self.sample_rate = sample_rate
        self.crop_samples = int(crop_seconds * sample_rate) if crop_seconds else None
        self.strict = strict
        self.downmix = downmix
        self.seed = seed
        self.epoch = 0
        self.fields = PASS_THROUGH + tuple(extra_fields)
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.manifest)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def crop(self, wave: torch.Tensor, index: int) -> torch.Tensor:
        if self.crop_samples is None or wave.shape[1] <= self.crop_samples:
            return wave
        rng = np.random.default_rng([self.seed, self.epoch, index])
        start = int(rng.integers(0, wave.shape[1] - self.crop_samples + 1))
        return wave[:, start : start + self.crop_samples]

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        row = self.manifest.rows[index]
        path = self.manifest.audio_path(index)
        try:
            wave = load_audio(path, sample_rate=self.sample_rate, downmix=self.downmix)
        except BadAudioError as error:
            where = f"{self.manifest.path}:{index + 1} ({row['id']})"
            if self.strict:
                raise BadAudioError(path, f"{error.reason}; manifest row {where}") from error
            if error.path not in self._warned:
                self._warned.add(error.path)
                log.warning("skipping bad audio %s: %s [%s]", error.path, error.reason, where)
            return None
        item = {name: row.get(name) for name in self.fields}
        item["audio"] = self.crop(wave, index)
        return item
