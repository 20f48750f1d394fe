"""FSDD with captions: "george, a man with a Greek accent, says seven", for text-to-audio and CLAP-style rewards.

Each clip's caption is built from its speaker's row in the mirror's `fsdd/speakers.tsv` (gender, accent) and its
digit; rows keep `text` (the digit word), `speaker`, `digit`, `index`, `gender` and `accent`.

Splits, disjoint by caption: the 60 (speaker, digit) captions are assigned by a Latin square. With the speakers
sorted by name and numbered i = 0..5, the caption of speaker i and digit d goes to

- test when (d - i) mod 10 is in `test_offsets` (default 0, 5: speaker i says digits i and i + 5),
- val when (d - i) mod 10 is in `val_offsets` (default 2, 7),
- train otherwise (6 of every speaker's 10 digits).

A digit meets the speakers at 6 consecutive offsets, so with at most 4 offsets held out every digit, and every
speaker, still occurs in train (checked; an assignment that breaks this raises). Val and test captions never
occur in train: retrieval among them tests composition (a known speaker saying a known digit in a pairing never
heard). Of the train captions, clips with FSDD's test indices (0-4) form `test_seen` (seen captions, unseen
recordings); the others (index 5-49) are `train`. Val and test keep all 50 clips of their captions.
Deterministic: no randomness is involved.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datamodules.manifest import Manifest, read_manifest, write_manifest
from datamodules.prepare.fsdd import (
    RECORDINGS_DIGEST,
    TEST_INDICES,
    FsddClip,
    clip_row,
    list_clips,
    locate_recordings,
)
from datamodules.prepare.stamp import is_prepared, mark_prepared
from research.text import DIGIT_WORDS

SPLITS = ("train", "val", "test", "test_seen")
# speakers.tsv's accent column: country code / language, written as an adjective
ACCENT_ADJECTIVES = {
    "GRC": "Greek",
    "USA": "American",
    "GBR": "British",
    "DEU": "German",
    "BEL": "Belgian French",
    "FRA": "French",
}
GENDER_NOUNS = {"male": "man", "female": "woman"}


def read_speakers(path: str | Path) -> dict[str, dict[str, str]]:
    """speakers.tsv (speaker, gender, accent, language) -> {speaker: row}."""
    with Path(path).open(encoding="utf-8", newline="") as lines:
        rows = list(csv.DictReader(lines, delimiter="\t"))
    missing = {"speaker", "gender", "accent"} - set(rows[0] if rows else ())
    if missing:
        raise ValueError(f"{path}: no column(s) {sorted(missing)}")
    return {row["speaker"].strip(): {k: (v or "").strip() for k, v in row.items()} for row in rows}


def accent_adjective(accent: str) -> str:
    """'GRC/Greek' -> 'Greek', 'USA/neutral' -> 'American', 'BEL/French' -> 'Belgian French'; an unknown code
    keeps the language part ('XYZ/Welsh' -> 'Welsh')."""
    code, _, language = accent.partition("/")
    return ACCENT_ADJECTIVES.get(code.strip().upper()) or language.strip() or code.strip()


def make_caption(speaker: str, gender: str, accent: str, digit: int) -> str:
    """make_caption("george", "male", "GRC/Greek", 7) == "george, a man with a Greek accent, says seven"."""
    adjective = accent_adjective(accent)
    article = "an" if adjective[:1].lower() in "aeiou" else "a"
    person = GENDER_NOUNS.get(gender.lower(), "person")
    return f"{speaker}, a {person} with {article} {adjective} accent, says {DIGIT_WORDS[digit]}"


def caption_split(
    speaker_number: int,
    digit: int,
    *,
    test_offsets: Sequence[int] = (0, 5),
    val_offsets: Sequence[int] = (2, 7),
) -> str:
    """The split of the caption of speaker number `speaker_number` (0-based, speakers sorted) saying `digit`."""
    offset = (digit - speaker_number) % len(DIGIT_WORDS)
    if offset in test_offsets:
        return "test"
    return "val" if offset in val_offsets else "train"


def assign_captions(
    speakers: Iterable[str], *, test_offsets: Sequence[int] = (0, 5), val_offsets: Sequence[int] = (2, 7)
) -> dict[tuple[str, int], str]:
    """{(speaker, digit): "train" | "val" | "test"} by the Latin square of the module docstring; raises when a
    speaker or a digit would be missing from train, or the offsets overlap."""
    if set(test_offsets) & set(val_offsets):
        raise ValueError(f"test_offsets {test_offsets} and val_offsets {val_offsets} overlap")
    names = sorted(set(speakers))
    splits = {
        (name, digit): caption_split(i, digit, test_offsets=test_offsets, val_offsets=val_offsets)
        for i, name in enumerate(names)
        for digit in range(len(DIGIT_WORDS))
    }
    in_train = [key for key, split in splits.items() if split == "train"]
    lacking = sorted(set(names) - {s for s, _ in in_train}) + sorted(
        str(d) for d in set(range(len(DIGIT_WORDS))) - {d for _, d in in_train}
    )
    if lacking:
        raise ValueError(f"offsets test {test_offsets} / val {val_offsets} leave {lacking} out of train")
    return splits


def captioned_row(clip: FsddClip, speaker: Mapping[str, str]) -> dict[str, Any]:
    return {
        **clip_row(clip),
        "caption": make_caption(clip.speaker, speaker["gender"], speaker["accent"], clip.digit),
        "gender": speaker["gender"],
        "accent": accent_adjective(speaker["accent"]),
    }


def prepare_fsdd_captions(
    *,
    out_dir: str | Path,
    mirror: str | None = None,
    download: bool = False,
    cache_dir: str | Path | None = None,
    speakers_tsv: str | Path | None = None,
    test_offsets: Sequence[int] = (0, 5),
    val_offsets: Sequence[int] = (2, 7),
) -> dict[str, Path]:
    """Write out_dir/{train,val,test,test_seen}.jsonl (see the module docstring); returns the paths by split.
    `speakers_tsv` defaults to the speakers.tsv beside the recordings folder (the mirror's fsdd/)."""
    out_dir = Path(out_dir)
    outputs = {split: out_dir / f"{split}.jsonl" for split in SPLITS}
    recordings = locate_recordings(mirror, download, Path(cache_dir or out_dir / "download"))
    speakers_tsv = Path(speakers_tsv or recordings.parent / "speakers.tsv")
    if not speakers_tsv.is_file():
        raise FileNotFoundError(f"speaker metadata not found: {speakers_tsv} (FSDD's speakers.tsv)")
    settings = {
        "recordings": str(recordings.resolve()),
        "digest": RECORDINGS_DIGEST,
        "speakers": speakers_tsv.read_text(encoding="utf-8"),
        "test_offsets": list(test_offsets),
        "val_offsets": list(val_offsets),
    }
    if is_prepared(out_dir, settings, list(outputs.values())):
        return outputs
    speakers = read_speakers(speakers_tsv)
    clips = list_clips(recordings)
    unknown = sorted({c.speaker for c in clips} - set(speakers))
    if unknown:
        raise ValueError(f"{speakers_tsv} has no row for speaker(s) {unknown}")
    splits = assign_captions({c.speaker for c in clips}, test_offsets=test_offsets, val_offsets=val_offsets)
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for clip in clips:
        split = splits[clip.speaker, clip.digit]
        if split == "train" and clip.index in TEST_INDICES:
            split = "test_seen"
        rows[split].append(captioned_row(clip, speakers[clip.speaker]))
    for split, path in outputs.items():
        write_manifest(path, rows[split])
    mark_prepared(out_dir, settings)
    return outputs


def caption_prompts(manifest: Manifest | str | Path | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One prompt per distinct caption of a manifest (a path, a `Manifest` or its rows), in order of first
    appearance: {"caption", "text", "speaker", "digit"} (the last three None where the rows lack them). What a
    text-to-audio RL loop generates from, and what a reward scores against."""
    if isinstance(manifest, str | Path):
        manifest = read_manifest(manifest, required=("caption",))
    rows = manifest.rows if isinstance(manifest, Manifest) else manifest
    prompts: dict[str, dict[str, Any]] = {}
    for row in rows:
        caption = row["caption"]
        if caption not in prompts:
            prompts[caption] = {
                "caption": caption,
                "text": row.get("text"),
                "speaker": row.get("speaker"),
                "digit": row.get("digit"),
            }
    return list(prompts.values())
