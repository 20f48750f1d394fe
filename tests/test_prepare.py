import json

import numpy as np
import soundfile as sf

from datamodules.manifest import read_manifest
from datamodules.prepare import prepare_connected_digits, prepare_folder, prepare_fsdd, prepare_librispeech
from research.text import DIGIT_WORDS


def test_fsdd_uses_its_own_split(mirror, tmp_path):
    paths = prepare_fsdd(out_dir=tmp_path, mirror=str(mirror))
    train, test = read_manifest(paths["train"]), read_manifest(paths["test"])
    assert (len(train), len(test)) == (2700, 300)
    assert all(row["index"] < 5 for row in test.rows) and all(row["index"] >= 5 for row in train.rows)
    assert all(row["text"] == DIGIT_WORDS[row["digit"]] for row in train.rows)
    assert train.audio_path(0).is_file()


def test_connected_digits_contract(tiny_data_dir):
    folder = tiny_data_dir / "connected_digits"
    splits = {
        name: read_manifest(folder / f"{name}.jsonl", required=("text",))
        for name in ("train", "val", "test", "test_heldout")
    }
    assert {name: len(m) for name, m in splits.items()} == {
        "train": 48,
        "val": 16,
        "test": 16,
        "test_heldout": 16,
    }
    for name, manifest in splits.items():
        speakers = {row["speaker"] for row in manifest.rows}
        assert ("theo" in speakers) == (name == "test_heldout"), name
        for row in manifest.rows:
            words = row["text"].split()
            assert 1 <= len(words) <= 7 and set(words) <= set(DIGIT_WORDS)
            assert [s[2] for s in row["segments"]] == words
            assert row["segments"][-1][1] <= row["duration"]
            info = sf.info(str(manifest.resolve(row["audio_filepath"])))
            assert abs(info.frames / info.samplerate - row["duration"]) < 1e-3


def test_connected_digits_are_deterministic_and_seeded(mirror, tmp_path):
    counts = {"train": 5, "val": 2, "test": 2, "test_heldout": 2}
    first = prepare_connected_digits(out_dir=tmp_path / "a", mirror=str(mirror), counts=counts, seed=7)
    again = prepare_connected_digits(out_dir=tmp_path / "b", mirror=str(mirror), counts=counts, seed=7)
    other = prepare_connected_digits(out_dir=tmp_path / "c", mirror=str(mirror), counts=counts, seed=8)
    texts = lambda p: [r["text"] for r in read_manifest(p["train"]).rows]  # noqa: E731
    assert texts(first) == texts(again)
    assert texts(first) != texts(other)
    a = sf.read(str(tmp_path / "a/wavs/train/digits_train_00000.wav"))[0]
    b = sf.read(str(tmp_path / "b/wavs/train/digits_train_00000.wav"))[0]
    assert np.array_equal(a, b)


def test_connected_digits_train_and_test_clips_do_not_mix():
    from pathlib import Path

    from datamodules.prepare.connected_digits import clip_split
    from datamodules.prepare.fsdd import FsddClip

    clip = lambda speaker, index: FsddClip(Path("x.wav"), 3, speaker, index)  # noqa: E731
    assert clip_split(clip("george", 0), "theo") == "test"
    assert clip_split(clip("george", 7), "theo") == "val"
    assert clip_split(clip("george", 30), "theo") == "train"
    assert clip_split(clip("theo", 30), "theo") == "test_heldout"


def test_librispeech_layouts(tmp_path):
    chapter = tmp_path / "std" / "19" / "198"
    chapter.mkdir(parents=True)
    sf.write(chapter / "19-198-0001.flac", np.zeros(1600, np.float32), 16000)
    (chapter / "19-198.trans.txt").write_text("19-198-0001 HELLO WORLD\n")
    loose = tmp_path / "loose"
    loose.mkdir()
    sf.write(loose / "103-1240-0000.flac", np.zeros(3200, np.float32), 16000)

    std = read_manifest(prepare_librispeech(root=tmp_path / "std", out_path=tmp_path / "std.jsonl")).rows
    assert std == [
        {
            "id": "19-198-0001",
            "audio_filepath": "std/19/198/19-198-0001.flac",
            "duration": 0.1,
            "sample_rate": 16000,
            "speaker": "19",
            "lang": "en",
            "text": "hello world",
        }
    ]
    row = read_manifest(prepare_librispeech(root=loose, out_path=tmp_path / "loose.jsonl")).rows[0]
    assert "text" not in row and row["speaker"] == "103" and row["duration"] == 0.2


def test_folder_with_transcripts(tmp_path):
    (tmp_path / "a").mkdir()
    sf.write(tmp_path / "a" / "x.wav", np.zeros(800, np.float32), 8000)
    sf.write(tmp_path / "a" / "y.wav", np.zeros(800, np.float32), 8000)
    (tmp_path / "t.tsv").write_text("x.wav\tgood morning\n")
    path = prepare_folder(root=tmp_path / "a", out_path=tmp_path / "m.jsonl", transcripts=tmp_path / "t.tsv")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["id"], r.get("text"), r["sample_rate"]) for r in rows] == [
        ("x", "good morning", 8000),
        ("y", None, 8000),
    ]
