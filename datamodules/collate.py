"""Pad a list of items into a batch dict with explicit lengths; count and drop skipped (None) items."""

from __future__ import annotations

from typing import Any

import torch


def collate_audio(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """-> {"audio": (B, 1, T) zero-padded, "audio_lens": (B,), per-item fields as lists, "n_skipped": int}."""
    good = [item for item in items if item is not None]
    lens = torch.tensor([item["audio"].shape[1] for item in good], dtype=torch.long)
    audio = torch.zeros(len(good), 1, int(lens.max()) if good else 0)
    for row, item in enumerate(good):
        audio[row, :, : item["audio"].shape[1]] = item["audio"]
    batch: dict[str, Any] = {"audio": audio, "audio_lens": lens, "n_skipped": len(items) - len(good)}
    fields = set(good[0]) - {"audio"} if good else set()
    batch.update({name: [item[name] for item in good] for name in fields})
    return batch
