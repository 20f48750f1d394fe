"""LibriSpeech: the standard <spk>/<chapter>/*.flac + *.trans.txt layout, or a loose folder of flac files
named <spk>-<chapter>-<utt>.flac (no transcripts: text absent, speaker from the name)."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from datamodules.manifest import write_manifest
from research.audio import audio_info


def read_transcripts(root: Path) -> dict[str, str]:
    texts = {}
    for trans in root.rglob("*.trans.txt"):
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt_id, _, text = line.partition(" ")
            if text:
                texts[utt_id] = text.strip().lower()
    return texts


def prepare_librispeech(*, root: str | Path, out_path: str | Path, min_duration: float = 0.0) -> Path:
    root = Path(root)
    files = sorted(root.rglob("*.flac"))
    if not files:
        raise FileNotFoundError(f"no .flac files under {root}")
    texts = read_transcripts(root)
    rows = []
    for flac in tqdm(files, desc=f"librispeech {root.name}"):
        duration, sample_rate, _ = audio_info(flac)
        if duration < min_duration:
            continue
        row = {
            "id": flac.stem,
            "audio_filepath": str(flac),
            "duration": round(duration, 4),
            "sample_rate": sample_rate,
            "speaker": flac.stem.split("-")[0],
            "lang": "en",
        }
        if flac.stem in texts:
            row["text"] = texts[flac.stem]
        rows.append(row)
    return write_manifest(out_path, rows)
