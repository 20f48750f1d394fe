"""The one audio datamodule every component trains on, with three views over the same manifests:

- "crops": fixed-length random crops (codecs, SSL); text not required.
- "utterances": whole utterances with their text (ASR).
- "captions": whole clips with a `caption` (text-to-audio).

The train manifest may be a list of manifests (e.g. LibriSpeech excerpts plus connected digits), read as one;
`preparers` maps names to preparation callables (run in order in `prepare_data`), so a data config can add one.
`context` (a `datamodules.context.ContextBuilder`) gives each item a text `context` and `keywords` (context SFT).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable

import torch

from datamodules.base import PreparedDataModule
from datamodules.collate import collate_audio
from datamodules.context import ContextBuilder
from datamodules.datasets import ManifestAudioDataset
from datamodules.manifest import Manifest, read_manifest
from datamodules.sampling import DurationBucketBatchSampler, ResumableDataLoader

log = logging.getLogger(__name__)

VIEW_REQUIRED_FIELDS = {"crops": (), "utterances": ("text",), "captions": ("caption",)}


class AudioDataModule(PreparedDataModule):
    def __init__(
        self,
        *,
        train_manifest: str | list[str] | None = None,
        val_manifest: str | None = None,
        test_manifests: dict[str, str] | None = None,
        view: str = "utterances",
        sample_rate: int = 16000,
        crop_seconds: float | None = None,
        batch_size: int = 16,
        max_batch_seconds: float | None = None,
        num_buckets: int = 10,
        min_duration: float = 0.0,
        max_duration: float = math.inf,
        num_workers: int = 0,
        strict: bool = False,
        downmix: bool = True,
        seed: int = 0,
        extra_fields: tuple[str, ...] = (),
        array_fields: tuple[str, ...] = (),
        train_fraction: float = 1.0,
        preparers: dict[str, Callable[[], object]] | None = None,
        context: ContextBuilder | None = None,
    ):
        super().__init__()
        if view not in VIEW_REQUIRED_FIELDS:
            raise ValueError(f"unknown view '{view}', expected one of {sorted(VIEW_REQUIRED_FIELDS)}")
        if view == "crops" and not crop_seconds:
            raise ValueError("the crops view needs crop_seconds")
        self.manifests = {"train": train_manifest, "val": val_manifest}
        self.test_manifests = dict(test_manifests or {})
        self.view = view
        self.sample_rate = sample_rate
        self.crop_seconds = crop_seconds if view == "crops" else None
        self.batching = {
            "batch_size": batch_size,
            "max_batch_seconds": max_batch_seconds,
            "num_buckets": num_buckets,
        }
        self.duration_range = (min_duration, max_duration)
        self.num_workers = num_workers
        self.strict = strict
        self.downmix = downmix
        self.seed = seed
        self.extra_fields = tuple(extra_fields)
        self.array_fields = tuple(array_fields)
        if not 0 < train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
        self.train_fraction = train_fraction
        self.preparers = dict(preparers or {})
        self.context = context
        self.datasets: dict[str, ManifestAudioDataset] = {}

    def read_manifests(self, paths: str | list[str]) -> Manifest:
        """One manifest, or several concatenated (their relative paths made absolute)."""
        required = VIEW_REQUIRED_FIELDS[self.view]
        if isinstance(paths, str):
            return read_manifest(paths, required=required)
        parts = [read_manifest(path, required=required) for path in paths]
        path_fields = ("audio_filepath", *self.array_fields)
        rows = [
            {**row, **{f: str(part.resolve(row[f])) for f in path_fields if f in row}}
            for part in parts
            for row in part.rows
        ]
        return Manifest(path=parts[0].path, rows=rows)

    def load_manifest(self, path: str | list[str]) -> Manifest:
        manifest = self.read_manifests(path)
        low, high = self.duration_range
        kept = [row for row in manifest.rows if low <= row["duration"] <= high]
        if len(kept) < len(manifest.rows):
            log.info(
                "%s: %d of %d rows outside [%s, %s] s",
                path,
                len(manifest) - len(kept),
                len(manifest),
                low,
                high,
            )
        if not kept:
            raise ValueError(f"{path}: no rows with duration in [{low}, {high}] s")
        rates = sorted({row["sample_rate"] for row in kept} - {self.sample_rate})
        if rates:
            log.info("%s: resampling audio at %s Hz to %d Hz", path, rates, self.sample_rate)
        return Manifest(path=manifest.path, rows=kept)

    def train_subset(self, manifest: Manifest) -> Manifest:
        """A seeded `train_fraction` of the training rows (low-resource fine-tuning), the same on every run."""
        if self.train_fraction == 1.0:
            return manifest
        count = max(1, round(len(manifest) * self.train_fraction))
        chosen = sorted(random.Random(self.seed).sample(range(len(manifest)), count))
        log.info(
            "training on %d of %d utterances (train_fraction=%s)", count, len(manifest), self.train_fraction
        )
        return Manifest(path=manifest.path, rows=[manifest.rows[i] for i in chosen])

    def make_dataset(self, path: str | list[str], split: str = "") -> ManifestAudioDataset:
        manifest = self.load_manifest(path)
        return ManifestAudioDataset(
            self.train_subset(manifest) if split == "train" else manifest,
            sample_rate=self.sample_rate,
            crop_seconds=self.crop_seconds,
            strict=self.strict,
            downmix=self.downmix,
            seed=self.seed,
            extra_fields=self.extra_fields,
            array_fields=self.array_fields,
            context=self.context,
        )

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": list(self.test_manifests)}
        names = wanted.get(stage, ["train", "val", *self.test_manifests])
        paths = {**self.manifests, **self.test_manifests}
        for name in names:
            if paths.get(name) and name not in self.datasets:
                self.datasets[name] = self.make_dataset(paths[name], name)

    def loader(self, name: str, *, shuffle: bool) -> ResumableDataLoader:
        if name not in self.datasets:
            raise RuntimeError(f"no '{name}' manifest configured for this datamodule")
        dataset = self.datasets[name]
        durations = dataset.manifest.durations
        if self.crop_seconds:
            durations = [min(d, self.crop_seconds) for d in durations]
        sampler = DurationBucketBatchSampler(durations, shuffle=shuffle, seed=self.seed, **self.batching)
        return ResumableDataLoader(
            dataset,
            batch_sampler=sampler,
            advance_epochs=shuffle,  # training loaders only
            collate_fn=collate_audio,
            num_workers=self.num_workers,
            # Its own generator: creating an iterator must not draw from the global RNG (resumed runs would diverge).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> ResumableDataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> ResumableDataLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> list[ResumableDataLoader]:
        return [self.loader(name, shuffle=False) for name in self.test_manifests]

    def predict_dataloader(self) -> list[ResumableDataLoader]:
        return self.test_dataloader()
