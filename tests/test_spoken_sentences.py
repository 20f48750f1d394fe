"""The espeak-ng spoken-sentences preparer: contract, sentence split, held-out voices, LM text, noise, stamp."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import soundfile as sf
from hydra.utils import instantiate

from datamodules.audio_datamodule import AudioDataModule
from datamodules.manifest import read_manifest
from datamodules.prepare import prepare_spoken_sentences
from datamodules.prepare.espeak import Espeak
from datamodules.prepare.spoken_sentences import (
    CATEGORIES,
    EVAL_COUNTS,
    HELDOUT_VARIANTS,
    SPLITS,
    assign_sentences,
    entry_sentences,
    load_sentences,
)
from experiments.core.compose import compose_config

COUNTS = {"train": 12, "val": 3, "test": 3, "test_heldout": 3}


def prepare(out_dir, **kwargs):
    return prepare_spoken_sentences(out_dir, counts=COUNTS, seed=5, **kwargs)


def manifests(paths):
    return {split: read_manifest(paths[split], required=("text", "speaker")) for split in SPLITS}


def sentences(paths):
    return {split: [row["text"] for row in manifest.rows] for split, manifest in manifests(paths).items()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("spoken_sentences")
    return out_dir, prepare(out_dir)


def test_manifests_and_audio(corpus):
    for split, manifest in manifests(corpus[1]).items():
        assert len(manifest) == COUNTS[split]
        for row in manifest.rows:
            assert row["synthetic"] is True and row["speaker"] == f"{row['voice']}+{row['variant']}"
            assert 130 <= row["rate"] <= 200 and 30 <= row["pitch"] <= 70
            assert (row["snr_db"] is None) == (row["noise"] is None)
            wave, rate = sf.read(str(manifest.resolve(row["audio_filepath"])), dtype="float32")
            assert rate == row["sample_rate"] == 16000 and wave.ndim == 1
            assert abs(len(wave) / rate - row["duration"]) < 1e-3
            assert 0.1 < row["duration"] / len(row["text"].split()) < 1.0  # seconds per word, 130-200 wpm
            assert np.sqrt(np.mean(wave**2)) > 0.02


def test_splits_share_no_sentence_and_heldout_voices_stay_heldout(corpus):
    texts = sentences(corpus[1])
    for i, first in enumerate(SPLITS):
        assert len(set(texts[first])) == len(texts[first])
        for second in SPLITS[i + 1 :]:
            assert not set(texts[first]) & set(texts[second]), (first, second)
    for split, manifest in manifests(corpus[1]).items():
        variants = {row["variant"] for row in manifest.rows}
        assert (
            (variants <= set(HELDOUT_VARIANTS))
            if split == "test_heldout"
            else not variants & set(HELDOUT_VARIANTS)
        )


def test_lm_corpus_holds_train_text_and_no_evaluation_text(corpus):
    out_dir, paths = corpus
    lm_text = (out_dir / "lm_corpus.txt").read_text().splitlines()
    texts = sentences(paths)
    assert set(texts["train"]) <= set(lm_text) and len(lm_text) > 1000
    for split in ("val", "test", "test_heldout"):
        assert not any(sentence in line for sentence in texts[split] for line in lm_text), split
    card = json.loads((out_dir / "corpus.json").read_text())
    assert card["sentences"]["lm_corpus"] == len(lm_text) and (out_dir / "LICENSE.fortune").is_file()
    assert card["splits"]["train"]["utterances"] == COUNTS["train"] and card["synthetic"]


def test_an_unchanged_second_call_is_skipped(corpus):
    out_dir, paths = corpus
    audio = out_dir / "audio" / "train" / "sentences_train_00000.flac"
    before = paths["train"].stat().st_mtime_ns, audio.stat().st_mtime_ns
    assert prepare(out_dir) == paths
    assert (paths["train"].stat().st_mtime_ns, audio.stat().st_mtime_ns) == before


def test_synthesis_does_not_depend_on_what_was_spoken_before():
    espeak = Espeak()
    first = espeak.synthesize(
        "the sage accepts the ebb and flow of things", "en-gb-scotland+f2", 150, 40, seed=3
    )
    espeak.synthesize("something else entirely", "en-us+m1", 190, 60)
    again = espeak.synthesize(
        "the sage accepts the ebb and flow of things", "en-gb-scotland+f2", 150, 40, seed=3
    )
    assert first[1] == again[1] == espeak.sample_rate and np.array_equal(first[0], again[0])


def test_deterministic_under_the_seed(corpus, tmp_path):
    again = prepare(tmp_path / "again")
    assert sentences(again) == sentences(corpus[1])
    first, second = (manifests(p)["val"].audio_path(0) for p in (corpus[1], again))
    assert np.array_equal(sf.read(str(first))[0], sf.read(str(second))[0])
    pool = load_sentences(CATEGORIES)
    deal = lambda seed: assign_sentences(pool, EVAL_COUNTS, np.random.default_rng(seed))[0]  # noqa: E731
    assert deal(5) == deal(5) and deal(5)["val"] != deal(6)["val"]


def test_noise_is_added_at_the_requested_snr(tmp_path):
    counts = {"train": 6, "val": 1, "test": 1, "test_heldout": 1}
    clean = read_manifest(
        prepare_spoken_sentences(tmp_path / "clean", counts=counts, noise_fraction=0.0)["train"]
    )
    noisy = read_manifest(
        prepare_spoken_sentences(
            tmp_path / "noisy", counts=counts, noise_fraction=1.0, noise_snr_db=(8.0, 12.0)
        )["train"]
    )
    assert {row["noise"] for row in noisy.rows} == {"white", "pink"}
    for index, (plain, mixed) in enumerate(zip(clean.rows, noisy.rows, strict=True)):
        assert plain["snr_db"] is None and (plain["text"], plain["speaker"]) == (
            mixed["text"],
            mixed["speaker"],
        )
        speech = sf.read(str(clean.audio_path(index)))[0]
        noise = sf.read(str(noisy.audio_path(index)))[0] - speech
        measured = 10 * np.log10(np.mean(speech**2) / np.mean(noise**2))
        assert 8.0 <= mixed["snr_db"] <= 12.0 and abs(measured - mixed["snr_db"]) < 0.5


def test_unknown_voices_are_named(tmp_path):
    with pytest.raises(ValueError, match="'en-xx'"):
        prepare(tmp_path, voices=["en-xx"])
    with pytest.raises(ValueError, match="variant 'zz'"):
        Espeak().synthesize("hello there", "en-us+zz")
    with pytest.raises(ValueError, match="heldout_variants"):
        prepare(tmp_path, variants=["m1"], heldout_variants=["m1"])
    assert not (tmp_path / "train.jsonl").exists()


def test_too_small_a_corpus_and_bad_settings_are_errors(tmp_path):
    with pytest.raises(ValueError, match="usable sentences"):
        prepare_spoken_sentences(tmp_path, counts={"val": 100_000, "train": 1})
    with pytest.raises(ValueError, match="h of speech, less than the 10.00 h"):
        prepare_spoken_sentences(
            tmp_path, hours=10.0, categories=["tao"], counts={"val": 1, "test": 1, "test_heldout": 1}
        )
    with pytest.raises(ValueError, match="noise_fraction"):
        prepare(tmp_path, noise_fraction=2.0)


def test_sentence_normalisation():
    entry = (
        "A clash of doctrine is not a disaster -- it is an opportunity.  Mr. Smith said `hello there' to\n"
        "2 dogs!  Too short.  Never trust the NASA people over there.  It's a well-known \"fact\", isn't it?\n"
        "\n"
        "A title line without a stop\n"
        "\t\t-- Some Author, in his book\n"
        "\tabout things that continue the attribution line.\n"
    )
    assert entry_sentences(entry) == [
        "a clash of doctrine is not a disaster it is an opportunity",
        "it's a well known fact isn't it",
    ]
    assert entry_sentences("We have 3 days left to finish the job.") == []  # digits are read out
    assert entry_sentences("Caf\u00e9 society is where you meet everyone you know.") == []
    assert entry_sentences("Ask Dr. Smith about bread, milk, etc. and so on.") == []
    assert entry_sentences("She said, 'the rest of the story is not for us.'") == [
        "she said the rest of the story is not for us"
    ]


def test_the_data_config_builds_and_matches_the_command_line_defaults(tmp_path):
    cfg = compose_config(["data=spoken_sentences", f"paths.data_dir={tmp_path}"])
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, AudioDataModule)
    assert set(datamodule.test_set_names) == {"seen", "heldout"}
    preparer = datamodule.preparers["spoken_sentences"]
    assert preparer.func is prepare_spoken_sentences
    assert preparer.keywords.pop("out_dir") == f"{tmp_path}/spoken_sentences"
    defaults = {n: p.default for n, p in inspect.signature(prepare_spoken_sentences).parameters.items()}
    counts = preparer.keywords.pop("counts")
    assert counts == {"val": 200, "test": 300, "test_heldout": 300}
    for name, value in preparer.keywords.items():  # so a corpus prepared from the command line is reused
        default = defaults[name]
        assert value == (list(default) if isinstance(default, tuple) else default), name
