"""Write one array per utterance beside a manifest (teacher features, codes, k-means labels) and a manifest that
names them in a column, so stages chain through manifests. Batched (utterances sorted by duration so batches
pad little), resumable (files already written are kept unless `overwrite`), with a progress bar; unreadable
audio is reported by file and skipped, and the rest continues.

Each output folder records what made it (`source.json`: the model's checkpoint digest and the settings); files
made from another source are rebuilt, never reused."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datamodules.collate import pad_stack
from datamodules.manifest import Manifest, read_manifest, write_manifest
from research.audio import BadAudioError, audio_info, load_audio
from research.digest import file_digest

log = logging.getLogger(__name__)

# audio (B, 1, T), audio_lens (B,) -> one array per utterance, time first: (frames, ...) trimmed to its length
BatchFn = Callable[[torch.Tensor, torch.Tensor], list[np.ndarray]]


@dataclass
class DumpResult:
    out_dir: Path
    manifest: Path | None
    written: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (audio path, reason)


def manifest_of_files(paths: list[str | Path]) -> Manifest:
    """An in-memory manifest over bare audio files (ids from file names); unreadable ones get duration 0."""
    rows = []
    for path in map(Path, paths):
        try:
            duration, rate, _ = audio_info(path)
        except BadAudioError:
            duration, rate = 0.0, 0
        rows.append(
            {
                "id": path.stem,
                "audio_filepath": str(path.resolve()),
                "duration": duration,
                "sample_rate": rate,
            }
        )
    return Manifest(path=Path.cwd() / "files.jsonl", rows=rows)


def array_name(utterance_id: str) -> str:
    return utterance_id.replace("/", "__").replace(os.sep, "__") + ".npy"


def save_array(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)  # an interrupted dump never leaves a truncated file that a resumed one would keep


SOURCE_FILE = "source.json"


def checkpoint_source(path: str | Path, **settings) -> dict:
    """What a dump made by a model depends on: its checkpoint file's (or model folder's) content and the
    settings."""
    return {"checkpoint": str(Path(path).resolve()), "sha1": file_digest(path), **settings}


def claim_folder(out_dir: Path, source: dict | None) -> int:
    """Make `out_dir` hold only arrays made by `source`: when it records another (or no) source, every array in it
    is deleted first, whichever manifest it came from, so neither an interrupted rebuild nor another manifest's
    dump into the same folder can keep a stale one. Returns the number of arrays deleted."""
    record = out_dir / SOURCE_FILE
    normalized = json.loads(json.dumps(source, default=str))
    if record.is_file() and json.loads(record.read_text()) == normalized:
        return 0
    stale = list(out_dir.glob("*.npy"))
    for path in stale:
        path.unlink()
    record.write_text(json.dumps(normalized, indent=2))
    return len(stale)


def load_batch(
    manifest: Manifest, indices: list[int], sample_rate: int, failures: list[tuple[str, str]]
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The readable rows of `indices` as a padded batch: (their indices, audio (B, 1, T), lens (B,)); each
    unreadable one is logged by file (and manifest line, where the manifest is a file) and added to `failures`."""
    kept, waves = [], []
    for index in indices:
        try:
            waves.append(load_audio(manifest.audio_path(index), sample_rate=sample_rate)[0])
            kept.append(index)
        except BadAudioError as error:
            failures.append((str(error.path), error.reason))
            where = f" (line {index + 1} of {manifest.path})" if manifest.path.is_file() else ""
            log.error("cannot read %s: %s%s", error.path, error.reason, where)
    audio, lens = pad_stack(waves) if waves else (torch.zeros(0, 0), torch.zeros(0, dtype=torch.long))
    return kept, audio[:, None, :], lens


def dump_per_utterance(
    source: str | Path | Manifest,
    *,
    column: str,
    compute: BatchFn,
    rate: float,
    sample_rate: int,
    out_dir: str | Path | None = None,
    out_manifest: str | Path | None = None,
    batch_size: int = 8,
    overwrite: bool = False,
    desc: str | None = None,
    made_by: dict | None = None,
) -> DumpResult:
    """Run `compute` over every utterance of `source` and save `<out_dir>/<id>.npy`; when `source` is a manifest
        file, also write `out_manifest` (default `<stem>_<column>.jsonl` beside it) with columns `<column>` (path
        relative to the new manifest) and `<column>_rate` (frames per second), leaving out failed rows. `source`
    (JSON-able: checkpoint digest, settings) names what made the arrays; a folder made by another is rebuilt."""
    manifest = source if isinstance(source, Manifest) else read_manifest(source)
    out_dir = Path(out_dir) if out_dir else manifest.path.parent / column
    out_dir.mkdir(parents=True, exist_ok=True)
    if stale := claim_folder(out_dir, made_by):
        log.warning(
            "%s held %d arrays made by another source than %s: deleted, rebuilding", out_dir, stale, made_by
        )
    if out_manifest is None and not isinstance(source, Manifest):
        out_manifest = manifest.path.with_name(f"{manifest.path.stem}_{column}.jsonl")
    result = DumpResult(out_dir=out_dir, manifest=Path(out_manifest) if out_manifest else None)
    targets = [out_dir / array_name(row["id"]) for row in manifest.rows]
    pending = [i for i in range(len(manifest)) if overwrite or not targets[i].is_file()]
    result.reused = len(manifest) - len(pending)
    pending.sort(key=lambda i: manifest.rows[i]["duration"])
    failed: set[int] = set()
    with tqdm(total=len(pending), desc=desc or f"{column}", unit="utt") as progress:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            indices, audio, lens = load_batch(manifest, chunk, sample_rate, result.failed)
            failed.update(set(chunk) - set(indices))
            if indices:
                for index, array in zip(indices, compute(audio, lens), strict=True):
                    save_array(targets[index], array)
                result.written += len(indices)
            progress.update(len(pending[start : start + batch_size]))
    if result.manifest is not None:
        rows = []
        for index, row in enumerate(manifest.rows):
            if index in failed:
                continue
            relative = os.path.relpath(targets[index].resolve(), result.manifest.parent.resolve())
            rows.append(
                {
                    **row,
                    "audio_filepath": str(manifest.audio_path(index)),
                    column: relative,
                    f"{column}_rate": rate,
                }
            )
        write_manifest(result.manifest, rows)
    return result
