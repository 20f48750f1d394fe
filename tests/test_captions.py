"""FSDD captions: the caption of a clip, caption-disjoint splits that still cover every speaker and digit in
train, determinism, the prompts of a split, and the captions view of the audio datamodule."""

from __future__ import annotations

import json

import pytest

from datamodules.audio_datamodule import AudioDataModule
from datamodules.manifest import read_manifest
from datamodules.prepare import caption_prompts, prepare_fsdd_captions
from datamodules.prepare.fsdd_captions import accent_adjective, assign_captions, make_caption

SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]


@pytest.fixture(scope="module")
def captions_dir(mirror, tmp_path_factory):
    out = tmp_path_factory.mktemp("captions") / "a"
    prepare_fsdd_captions(out_dir=out, mirror=str(mirror))
    return out


def rows(folder, split: str) -> list[dict]:
    return read_manifest(folder / f"{split}.jsonl", required=("caption",)).rows


def test_caption_wording():
    assert make_caption("george", "male", "GRC/Greek", 7) == "george, a man with a Greek accent, says seven"
    assert make_caption("theo", "male", "USA/neutral", 0) == "theo, a man with an American accent, says zero"
    assert make_caption("ann", "female", "XYZ/Welsh", 8) == "ann, a woman with a Welsh accent, says eight"
    assert [accent_adjective(a) for a in ("DEU/German", "BEL/French")] == ["German", "Belgian French"]


def test_a_row_carries_its_caption_and_metadata(captions_dir):
    # jackson is speaker 1 of the sorted six; digit 0 is offset (0 - 1) mod 10 = 9: train; index 10 >= 5: train
    (row,) = [r for r in rows(captions_dir, "train") if r["id"] == "fsdd_0_jackson_10"]
    assert row["caption"] == "jackson, a man with an American accent, says zero"
    assert (row["text"], row["speaker"], row["digit"], row["gender"], row["accent"]) == (
        "zero",
        "jackson",
        0,
        "male",
        "American",
    )
    # george is speaker 0: digit 7 is offset 7, a val offset; digit 5 is offset 5, a test offset
    val_ids = {r["id"] for r in rows(captions_dir, "val")}
    test_ids = {r["id"] for r in rows(captions_dir, "test")}
    assert "fsdd_7_george_3" in val_ids and "fsdd_5_george_30" in test_ids
    (george7,) = [r for r in rows(captions_dir, "val") if r["id"] == "fsdd_7_george_3"]
    assert george7["caption"] == "george, a man with a Greek accent, says seven"
    # a train caption's clip with an FSDD test index (0-4) is in test_seen, not train
    seen_ids = {r["id"] for r in rows(captions_dir, "test_seen")}
    assert "fsdd_0_jackson_3" in seen_ids


def test_splits_are_disjoint_by_caption_and_train_covers_every_speaker_and_digit(captions_dir):
    captions = {
        s: {r["caption"] for r in rows(captions_dir, s)} for s in ("train", "val", "test", "test_seen")
    }
    assert [len(captions[s]) for s in ("train", "val", "test")] == [36, 12, 12]
    assert not captions["train"] & captions["val"]
    assert not captions["train"] & captions["test"]
    assert not captions["val"] & captions["test"]
    assert captions["test_seen"] == captions["train"]
    train = rows(captions_dir, "train")
    assert {r["speaker"] for r in train} == set(SPEAKERS)
    assert {r["digit"] for r in train} == set(range(10))
    assert all(r["index"] >= 5 for r in train)
    sizes = [len(rows(captions_dir, s)) for s in ("train", "val", "test", "test_seen")]
    assert sizes == [36 * 45, 12 * 50, 12 * 50, 36 * 5] and sum(sizes) == 3000
    # every speaker has 2 test and 2 val digits
    for split in ("val", "test"):
        per_speaker = {
            s: {r["digit"] for r in rows(captions_dir, split) if r["speaker"] == s} for s in SPEAKERS
        }
        assert all(len(digits) == 2 for digits in per_speaker.values()), per_speaker


def test_preparation_is_deterministic(mirror, captions_dir):
    again = captions_dir.parent / "b"  # a sibling: the relative audio paths are the same
    prepare_fsdd_captions(out_dir=again, mirror=str(mirror))
    for split in ("train", "val", "test", "test_seen"):
        assert (again / f"{split}.jsonl").read_bytes() == (captions_dir / f"{split}.jsonl").read_bytes()


def test_assignments_that_leave_a_digit_out_of_train_are_refused():
    splits = assign_captions(SPEAKERS)
    assert splits["george", 0] == "test" and splits["george", 2] == "val" and splits["jackson", 0] == "train"
    with pytest.raises(ValueError, match="out of train"):
        assign_captions(SPEAKERS, test_offsets=(0, 1, 2), val_offsets=(3, 4, 5))  # digit 5: offsets 0-5
    with pytest.raises(ValueError, match="overlap"):
        assign_captions(SPEAKERS, test_offsets=(0, 5), val_offsets=(5,))


def test_caption_prompts_one_per_distinct_caption(captions_dir):
    prompts = caption_prompts(captions_dir / "test.jsonl")
    assert len(prompts) == 12 and len({p["caption"] for p in prompts}) == 12
    first = json.loads((captions_dir / "test.jsonl").read_text().splitlines()[0])
    assert prompts[0] == {
        "caption": first["caption"],
        "text": first["text"],
        "speaker": first["speaker"],
        "digit": first["digit"],
    }
    rows_ = [{"caption": "b"}, {"caption": "a", "text": "one"}, {"caption": "b", "text": "two"}]
    assert caption_prompts(rows_) == [
        {"caption": "b", "text": None, "speaker": None, "digit": None},
        {"caption": "a", "text": "one", "speaker": None, "digit": None},
    ]


def test_the_captions_view_batches_captions(captions_dir):
    data = AudioDataModule(
        train_manifest=str(captions_dir / "test_seen.jsonl"),
        val_manifest=str(captions_dir / "val.jsonl"),
        view="captions",
        batch_size=4,
    )
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    assert batch["audio"].shape[:2] == (4, 1) and len(batch["caption"]) == 4
    assert all(c.endswith(f"says {t}") for c, t in zip(batch["caption"], batch["text"], strict=True))
