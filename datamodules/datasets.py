"""Datasets over a manifest: random fixed-length crops (codecs, SSL) or whole utterances (ASR, captions).

Frame-aligned arrays (teacher features, k-means labels) named in manifest columns (`array_fields`, a `.npy` file
per row with its frame rate in `<field>_rate`) are cropped together with the audio.

Bad audio or arrays never raise mid-epoch unless strict: the item comes back as None, is warned about once per
file and counted by the collate function. Randomness (crop offsets, text contexts) is derived from (seed, epoch,
index), so it does not depend on worker count or on resuming.

With a `ContextBuilder` each item also gets a text `context` for an LLM prompt and its `keywords`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.context import ContextBuilder
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
        array_fields: tuple[str, ...] = (),
        context: ContextBuilder | None = None,
    ):
        self.manifest = manifest
        self.sample_rate = sample_rate
        self.crop_samples = int(crop_seconds * sample_rate) if crop_seconds else None
        self.strict = strict
        self.downmix = downmix
        self.seed = seed
        self.epoch = 0
        self.fields = PASS_THROUGH + tuple(extra_fields)
        self.array_fields = tuple(array_fields)
        self.context = context
        if context is not None:
            context.bind(manifest.rows)
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.manifest)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def crop_start(self, samples: int, index: int) -> int | None:
        """Start sample of this epoch's crop of item `index`, or None when the item is kept whole."""
        if self.crop_samples is None or samples <= self.crop_samples:
            return None
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return int(rng.integers(0, samples - self.crop_samples + 1))

    def context_of(self, index: int) -> tuple[str, list[str]]:
        """This epoch's (context, keywords) of item `index`: fixed while the epoch stays 0 (evaluation)."""
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        return self.context(self.manifest.rows, index, rng)

    def load_array(self, index: int, field: str, start: int | None) -> torch.Tensor:
        """The rows of a frame-aligned array that cover the audio crop starting at sample `start`."""
        row = self.manifest.rows[index]
        if field not in row:
            raise BadAudioError(self.manifest.path, f"row has no '{field}' column")
        path = self.manifest.resolve(row[field])
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise BadAudioError(path, f"unreadable array: {error}") from error
        if start is not None:
            rate = float(row.get(f"{field}_rate") or 0)
            if rate <= 0:
                raise BadAudioError(path, f"row has no frame rate '{field}_rate' to crop it")
            first = round(start / self.sample_rate * rate)
            array = array[first : first + math.ceil(self.crop_samples / self.sample_rate * rate)]
        return torch.from_numpy(np.array(array))

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        row = self.manifest.rows[index]
        path = self.manifest.audio_path(index)
        try:
            wave = load_audio(path, sample_rate=self.sample_rate, downmix=self.downmix)
            start = self.crop_start(wave.shape[1], index)
            arrays = {field: self.load_array(index, field, start) for field in self.array_fields}
        except BadAudioError as error:
            where = f"{self.manifest.path}:{index + 1} ({row['id']})"
            if self.strict:
                raise BadAudioError(path, f"{error.reason}; manifest row {where}") from error
            if error.path not in self._warned:
                self._warned.add(error.path)
                log.warning("skipping bad audio %s: %s [%s]", error.path, error.reason, where)
            return None
        item = {name: row.get(name) for name in self.fields}
        item["audio"] = wave if start is None else wave[:, start : start + self.crop_samples]
        if self.context is not None:
            item["context"], item["keywords"] = self.context_of(index)
        return {**item, **arrays}
