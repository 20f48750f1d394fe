"""JSON Lines manifests: one utterance per line, audio paths relative to the manifest.

Required: id, audio_filepath, duration, sample_rate. Optional: text, speaker, lang, caption and any derived
column (teacher features, k-means labels, codes) naming a file beside the manifest.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "audio_filepath": (str,),
    "duration": (int, float),
    "sample_rate": (int,),
}
OPTIONAL_TEXT_FIELDS = ("text", "speaker", "lang", "caption")


class ManifestError(ValueError):
    """A manifest row that breaks the schema; the message names the manifest file and line."""


@dataclass
class Manifest:
    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def resolve(self, relative: str) -> Path:
        """A path stored in a row, resolved against the manifest's folder."""
        return (self.path.parent / relative).resolve()

    def audio_path(self, index: int) -> Path:
        return self.resolve(self.rows[index]["audio_filepath"])

    @property
    def durations(self) -> list[float]:
        return [float(r["duration"]) for r in self.rows]


def validate_row(row: Any, *, where: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check one decoded row against the schema; `required` adds task fields such as "text"."""
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name, types in REQUIRED_FIELDS.items():
        if name not in row:
            raise ManifestError(f"{where}: missing field '{name}'")
        if not isinstance(row[name], types) or isinstance(row[name], bool):
            raise ManifestError(f"{where}: field '{name}' should be {types[0].__name__}, got {row[name]!r}")
    if row["duration"] <= 0 or row["sample_rate"] <= 0:
        raise ManifestError(f"{where}: duration and sample_rate must be positive")
    for name in OPTIONAL_TEXT_FIELDS:
        if name in row and row[name] is not None and not isinstance(row[name], str):
            raise ManifestError(f"{where}: field '{name}' should be a string, got {row[name]!r}")
    for name in required:
        if row.get(name) is None:
            raise ManifestError(f"{where}: missing field '{name}' (required by this view)")
    return row


def read_manifest(path: str | Path, *, required: tuple[str, ...] = ()) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    manifest = Manifest(path=path.resolve())
    seen: set[str] = set()
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ManifestError(f"{where}: invalid JSON ({error.msg})") from error
            row = validate_row(row, where=where, required=required)
            if row["id"] in seen:
                raise ManifestError(f"{where}: duplicate id '{row['id']}'")
            seen.add(row["id"])
            manifest.rows.append(row)
    return manifest


def write_manifest(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows (audio_filepath absolute or relative to the current folder) with paths relative to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for number, row in enumerate(rows, start=1):
            row = dict(row)
            row["audio_filepath"] = os.path.relpath(
                Path(row["audio_filepath"]).resolve(), path.parent.resolve()
            )
            validate_row(row, where=f"{path}:{number}")
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)  # readers never see a half-written manifest
    return path
