"""Pad a list of items into a batch dict with explicit lengths; count and drop skipped (None) items."""

from __future__ import annotations

from typing import Any

import torch


def pad_stack(tensors: list[torch.Tensor], *, pad_value: float = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack tensors that differ in their first dimension, padded at the end -> (padded, lengths)."""
    lens = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
    shape = (len(tensors), int(lens.max()) if tensors else 0, *(tensors[0].shape[1:] if tensors else ()))
    padded = torch.full(shape, pad_value, dtype=tensors[0].dtype if tensors else torch.float32)
    for row, tensor in enumerate(tensors):
        padded[row, : tensor.shape[0]] = tensor
    return padded, lens


def collate_audio(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """-> {"audio": (B, 1, T) zero-padded, "audio_lens": (B,), "n_skipped": int, per-item fields as lists}.
    Other tensor fields (frame-aligned arrays) are padded along time into `<name>` with `<name>_lens`."""
    good = [item for item in items if item is not None]
    audio, lens = (
        pad_stack([item["audio"].T for item in good]) if good else (torch.zeros(0, 0, 1), torch.zeros(0))
    )
    batch: dict[str, Any] = {
        "audio": audio.transpose(1, 2),
        "audio_lens": lens.long(),
        "n_skipped": len(items) - len(good),
    }
    for name in set(good[0]) - {"audio"} if good else ():
        values = [item[name] for item in good]
        if isinstance(values[0], torch.Tensor):
            batch[name], batch[f"{name}_lens"] = pad_stack(values)
        else:
            batch[name] = values
    return batch
