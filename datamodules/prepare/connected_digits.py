"""Connected-digit utterances built from FSDD: 1-7 digits of one speaker joined by short random gaps.

Splits: train from FSDD train clips (index >= 10), val from train clips with index 5-9, test from FSDD test clips
(index 0-4), all without the held-out speaker; test_heldout from every clip of the held-out speaker. Each row
keeps the digit boundaries in `segments` ([start_s, end_s, word]) for alignment studies. Deterministic under seed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datamodules.manifest import write_manifest
from datamodules.prepare.fsdd import FsddClip, list_clips, locate_recordings
from datamodules.prepare.stamp import is_prepared, mark_prepared
from research.audio import load_audio, write_audio

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "test_heldout")
VAL_INDICES = range(5, 10)


def clip_split(clip: FsddClip, heldout_speaker: str) -> str:
    if clip.speaker == heldout_speaker:
        return "test_heldout"
    if clip.split == "test":
        return "test"
    return "val" if clip.index in VAL_INDICES else "train"


def compose_utterance(
    rng: np.random.Generator,
    clips: list[FsddClip],
    audio: dict[Path, torch.Tensor],
    *,
    sample_rate: int,
    max_digits: int,
    gap_seconds: tuple[float, float],
) -> tuple[torch.Tensor, list[list]]:
    """Concatenate 1..max_digits random clips with random silences; return audio and word segments."""
    count = int(rng.integers(1, max_digits + 1))
    chosen = [clips[i] for i in rng.integers(0, len(clips), size=count)]
    pieces, segments, cursor = [], [], 0
    for position, clip in enumerate(chosen):
        gap = rng.uniform(*gap_seconds) if position else rng.uniform(0, gap_seconds[0])
        silence = int(gap * sample_rate)
        pieces.append(torch.zeros(1, silence))
        cursor += silence
        wave = audio[clip.path]
        segments.append(
            [round(cursor / sample_rate, 4), round((cursor + wave.shape[1]) / sample_rate, 4), clip.text]
        )
        pieces.append(wave)
        cursor += wave.shape[1]
    pieces.append(torch.zeros(1, int(rng.uniform(0, gap_seconds[0]) * sample_rate)))
    return torch.cat(pieces, dim=1), segments


def prepare_connected_digits(
    *,
    out_dir: str | Path,
    mirror: str | None = None,
    download: bool = False,
    heldout_speaker: str = "theo",
    counts: dict[str, int] | None = None,
    max_digits: int = 7,
    gap_seconds: tuple[float, float] = (0.05, 0.3),
    sample_rate: int = 8000,
    seed: int = 1234,
) -> dict[str, Path]:
    """Write out_dir/{train,val,test,test_heldout}.jsonl and their wavs; returns manifest paths by split."""
    out_dir = Path(out_dir)
    counts = {"train": 3000, "val": 200, "test": 300, "test_heldout": 300, **(counts or {})}
    outputs = {split: out_dir / f"{split}.jsonl" for split in SPLITS}
    recordings = locate_recordings(mirror, download, out_dir / "download")
    settings = {
        "recordings": str(recordings.resolve()),
        "heldout_speaker": heldout_speaker,
        "counts": dict(counts),
        "max_digits": max_digits,
        "gap_seconds": list(gap_seconds),
        "sample_rate": sample_rate,
        "seed": seed,
    }
    if is_prepared(out_dir, settings, list(outputs.values())):
        return outputs

    clips = list_clips(recordings)
    if heldout_speaker not in {c.speaker for c in clips}:
        raise ValueError(f"held-out speaker '{heldout_speaker}' is not an FSDD speaker")
    pools: dict[str, dict[str, list[FsddClip]]] = defaultdict(lambda: defaultdict(list))
    for clip in clips:
        pools[clip_split(clip, heldout_speaker)][clip.speaker].append(clip)
    audio = {c.path: load_audio(c.path, sample_rate=sample_rate) for c in tqdm(clips, desc="loading FSDD")}

    for split_number, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_number])
        speakers = sorted(pools[split])
        rows = []
        for n in tqdm(range(counts[split]), desc=f"connected digits: {split}"):
            speaker = speakers[int(rng.integers(len(speakers)))]
            wave, segments = compose_utterance(
                rng,
                pools[split][speaker],
                audio,
                sample_rate=sample_rate,
                max_digits=max_digits,
                gap_seconds=tuple(gap_seconds),
            )
            utt_id = f"digits_{split}_{n:05d}"
            path = write_audio(out_dir / "wavs" / split / f"{utt_id}.wav", wave, sample_rate)
            rows.append(
                {
                    "id": utt_id,
                    "audio_filepath": str(path),
                    "duration": round(wave.shape[1] / sample_rate, 4),
                    "sample_rate": sample_rate,
                    "text": " ".join(s[2] for s in segments),
                    "speaker": speaker,
                    "lang": "en",
                    "segments": segments,
                }
            )
        write_manifest(outputs[split], rows)
    mark_prepared(out_dir, settings)
    log.info("connected digits written to %s", out_dir)
    return outputs
