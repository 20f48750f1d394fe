"""Any folder of audio files, with an optional transcript TSV (`path<TAB>text`, path relative to the folder,
or the file stem)."""

from __future__ import annotations

import csv
from pathlib import Path

from tqdm import tqdm

from datamodules.manifest import write_manifest
from research.audio import audio_info

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".opus"}


def read_transcript_tsv(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return {row[0]: row[1] for row in csv.reader(handle, delimiter="\t") if len(row) >= 2}


def prepare_folder(*, root: str | Path, out_path: str | Path, transcripts: str | Path | None = None) -> Path:
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under {root}")
    texts = read_transcript_tsv(Path(transcripts)) if transcripts else {}
    rows = []
    for audio in tqdm(files, desc=f"folder {root.name}"):
        relative = audio.relative_to(root).as_posix()
        duration, sample_rate, _ = audio_info(audio)
        row = {
            "id": relative.rsplit(".", 1)[0].replace("/", "_"),
            "audio_filepath": str(audio),
            "duration": round(duration, 4),
            "sample_rate": sample_rate,
        }
        text = texts.get(relative, texts.get(audio.stem))
        if text is not None:
            row["text"] = text
        rows.append(row)
    return write_manifest(out_path, rows)
