"""Preference pairs for CRPO: the manifest a CRPO iteration writes, one row per prompt with a pair.

Each row is an ordinary manifest row of the chosen sample (`audio_filepath`, `duration`, `sample_rate`, so the set
can be listened to and read by any tool) plus `caption`, `chosen_latent` and `rejected_latent` (the generator's
representation of both samples, saved as tensors beside the manifest), and their rewards. Training reads the saved
latents, not the audio: the policy is trained on what it generated, not on a re-encoding of its decoded audio.
Batches: {"caption", "chosen" (B, C, T), "rejected" (B, C, T), "chosen_score", "rejected_score", "id"}.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from datamodules.base import PreparedDataModule
from datamodules.manifest import Manifest, read_manifest
from datamodules.sampling import DurationBucketBatchSampler, ResumableDataLoader

PAIR_FIELDS = ("caption", "chosen_latent", "rejected_latent", "chosen_score", "rejected_score")


class PreferencePairs(Dataset):
    def __init__(self, manifest: str | Path):
        self.manifest: Manifest = read_manifest(manifest, required=PAIR_FIELDS)
        if len(self.manifest) == 0:
            raise ValueError(f"{manifest}: no preference pair (every prompt tied or scored NaN?)")

    def __len__(self) -> int:
        return len(self.manifest)

    def latent(self, index: int, field: str) -> torch.Tensor:
        path = self.manifest.resolve(self.manifest.rows[index][field])
        return torch.load(path, weights_only=True)

    def __getitem__(self, index: int) -> dict:
        row = self.manifest.rows[index]
        return {
            "id": row["id"],
            "caption": row["caption"],
            "chosen": self.latent(index, "chosen_latent"),
            "rejected": self.latent(index, "rejected_latent"),
            "chosen_score": float(row["chosen_score"]),
            "rejected_score": float(row["rejected_score"]),
        }


def collate_pairs(items: list[dict]) -> dict:
    shapes = {tuple(item[side].shape) for item in items for side in ("chosen", "rejected")}
    if len(shapes) != 1:
        raise ValueError(f"preference latents must share one shape (fixed-length generation), got {shapes}")
    return {
        "id": [item["id"] for item in items],
        "caption": [item["caption"] for item in items],
        "chosen": torch.stack([item["chosen"] for item in items]),
        "rejected": torch.stack([item["rejected"] for item in items]),
        "chosen_score": torch.tensor([item["chosen_score"] for item in items]),
        "rejected_score": torch.tensor([item["rejected_score"] for item in items]),
    }


class PreferenceDataModule(PreparedDataModule):
    """Training pairs of one CRPO iteration (`train_manifest`) and, optionally, pairs of held-out prompts
    (`val_manifest`) on which the loss and the pair accuracy are validated."""

    def __init__(
        self,
        *,
        train_manifest: str,
        val_manifest: str | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.manifests = {"train": train_manifest, "val": val_manifest}
        self.test_manifests, self.preparers = {}, {}
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.datasets: dict[str, PreferencePairs] = {}

    def setup(self, stage: str | None = None) -> None:
        for name, path in self.manifests.items():
            if path and name not in self.datasets:
                self.datasets[name] = PreferencePairs(path)

    def loader(self, name: str, *, shuffle: bool) -> ResumableDataLoader:
        dataset = self.datasets[name]
        sampler = DurationBucketBatchSampler(
            [1.0] * len(dataset), batch_size=self.batch_size, num_buckets=1, shuffle=shuffle, seed=self.seed
        )
        return ResumableDataLoader(
            dataset,
            batch_sampler=sampler,
            advance_epochs=shuffle,
            collate_fn=collate_pairs,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> ResumableDataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> ResumableDataLoader | list:
        return self.loader("val", shuffle=False) if "val" in self.datasets else []
