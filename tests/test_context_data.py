"""Text contexts for context SFT (datamodules.context.ContextBuilder) and their way through dataset and datamodule."""

import pickle

import numpy as np
import pytest
import soundfile as sf

from datamodules.audio_datamodule import AudioDataModule
from datamodules.context import ContextBuilder
from datamodules.datasets import ManifestAudioDataset
from datamodules.manifest import read_manifest, write_manifest
from tests.conftest import sine

# Every row has its own words, so each context entry can be traced back to the one row it came from.
ROWS = [{"id": f"u{i}", "text": " ".join(f"w{i}{c}" for c in "abcdef"), "speaker": "s"} for i in range(8)]


def ngrams(text: str) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)}


def source_rows(entry: str, rows=ROWS) -> list[int]:
    return [j for j, row in enumerate(rows) if tuple(entry.split()) in ngrams(row["text"])]


def draws(builder, rows=ROWS, seeds=range(20)):
    """(index, context, keywords) over every row and several generators."""
    for seed in seeds:
        for index in range(len(rows)):
            yield index, *builder(rows, index, np.random.default_rng([seed, index]))


def test_hotwords_hold_a_true_ngram_and_its_words_as_keywords():
    builder = ContextBuilder(p_true=1.0, ngram=(2, 3), distractors=2)
    lengths, places = set(), set()
    for index, context, keywords in draws(builder):
        entries = context.split(", ")
        assert len(entries) == 3
        places.add(entries.index(" ".join(keywords)))
        assert 2 <= len(keywords) <= 3
        lengths.add(len(keywords))
        assert tuple(keywords) in ngrams(ROWS[index]["text"])  # contiguous words of the transcript
        assert " ".join(keywords) in entries
        origins = [source_rows(entry) for entry in entries]
        assert all(len(origin) == 1 for origin in origins)
        assert sorted(origin[0] == index for origin in origins) == [False, False, True]
        assert all(2 <= len(entry.split()) <= 3 for entry in entries)
    assert lengths == {2, 3}
    assert places == {0, 1, 2}  # shuffled among the distractors


def test_hotwords_without_the_true_ngram_hold_only_other_rows_ngrams():
    builder = ContextBuilder(p_true=0.0, ngram=(1, 4), distractors=3)
    positions = set()
    for index, context, keywords in draws(builder):
        assert keywords == []
        entries = context.split(", ")
        assert len(entries) == 3
        for entry in entries:
            (origin,) = source_rows(entry)
            assert origin != index
            assert tuple(entry.split()) not in ngrams(ROWS[index]["text"])
            assert 1 <= len(entry.split()) <= 4
            positions.add(ROWS[origin]["text"].split().index(entry.split()[0]))
    assert len(positions) > 1  # n-grams start anywhere, not only at the first word


def test_p_true_mixes_positive_and_negative_contexts():
    with_keywords = [bool(k) for _, _, k in draws(ContextBuilder(p_true=0.5, distractors=1))]
    assert 0.3 < np.mean(with_keywords) < 0.7


def test_whole_transcripts_for_digit_strings():
    rows = [
        {"id": str(i), "text": text} for i, text in enumerate(["one two", "three four five", "six", "seven"])
    ]
    builder = ContextBuilder(p_true=1.0, ngram=(99, 99), distractors=2)
    texts = {row["text"] for row in rows}
    for index, context, keywords in draws(builder, rows):
        entries = context.split(", ")
        assert len(entries) == 3 and set(entries) <= texts and len(set(entries)) == 3
        assert rows[index]["text"] in entries
        assert keywords == rows[index]["text"].split()


def test_distractor_count_and_the_ones_that_cannot_be_drawn():
    for count in (0, 1, 3, 5):
        for _, context, keywords in draws(ContextBuilder(p_true=1.0, distractors=count), seeds=range(3)):
            entries = context.split(", ")
            assert len(entries) == count + 1
            if count == 0:
                assert context == " ".join(keywords)
    assert ContextBuilder(p_true=0.0, distractors=0)(ROWS, 0, np.random.default_rng(0)) == ("", [])
    one_row = [{"id": "a", "text": "one two three"}]
    assert ContextBuilder(p_true=1.0, ngram=(99, 99))(one_row, 0, np.random.default_rng(0)) == (
        "one two three",
        ["one", "two", "three"],
    )
    # distractors equal to the true n-gram are redrawn, then dropped
    same = [{"id": str(i), "text": "nine nine"} for i in range(4)]
    for _, context, _ in draws(ContextBuilder(p_true=1.0, ngram=(99, 99), distractors=3), same):
        assert context == "nine nine"
    for _, context, _ in draws(ContextBuilder(p_true=0.0, ngram=(99, 99), distractors=3), same):
        assert context == ""


def test_evaluation_contexts_of_each_kind():
    """The benchmark's and notebook's contexts (experiments.core.transcripts.with_contexts): a true run among
    distractors, distractors sharing no word with the transcript, the true run alone; the same on every call."""
    from experiments.core.transcripts import with_contexts

    # digit-like rows: other rows share words with each one, so distractors must be filtered
    rows = [{"text": t} for t in ("one two three", "two four", "five six", "three seven", "eight nine one")]
    keyword, distractor, oracle = (
        with_contexts(rows, kind, 4) for kind in ("keyword", "distractor", "oracle")
    )
    assert len(keyword) == 4 and keyword == with_contexts(rows, "keyword", 4)
    for row, k, d, o in zip(rows, keyword, distractor, oracle, strict=False):
        said = row["text"].split()
        assert k["keywords"] and " ".join(k["keywords"]) in row["text"]
        assert " ".join(k["keywords"]) in k["context"].split(", ")
        assert d["keywords"] == [] and d["context"]
        assert not any(set(entry.split()) & set(said) for entry in d["context"].split(", "))
        assert o["context"] == " ".join(o["keywords"]) == " ".join(k["keywords"])
    with pytest.raises(ValueError, match="unknown context kind"):
        with_contexts(rows, "hotword", 2)


def test_separator_joins_the_entries():
    context, _ = ContextBuilder(p_true=1.0, distractors=2, separator=" | ")(ROWS, 0, np.random.default_rng(1))
    assert len(context.split(" | ")) == 3 and ", " not in context


def test_p_context_decides_whether_there_is_any_context():
    for mode in ("hotwords", "previous", "column"):
        builder = ContextBuilder(mode=mode, p_context=0.0, p_true=1.0)
        rows = [{**row, "context": ["x"], "keywords": ["y"]} for row in ROWS]
        assert all(c == "" and k == [] for _, c, k in draws(builder, rows))
    some = [bool(c) for _, c, _ in draws(ContextBuilder(p_context=0.5, p_true=1.0))]
    assert 0.3 < np.mean(some) < 0.7


def write_wavs(folder, rows) -> list[dict]:
    """Rows with a 0.2 s sine each, ready for write_manifest."""
    out = []
    for i, row in enumerate(rows):
        path = folder / f"{row['id']}.wav"
        sf.write(path, sine(0.2, 16000, freq=200.0 + 50 * i), 16000)
        out.append({**row, "audio_filepath": str(path), "duration": 0.2, "sample_rate": 16000})
    return out


def test_context_follows_seed_epoch_and_index(tmp_path):
    manifest = read_manifest(write_manifest(tmp_path / "m.jsonl", write_wavs(tmp_path, ROWS)))

    def contexts(seed=0, epoch=0, builder=None):
        dataset = ManifestAudioDataset(
            manifest, sample_rate=16000, seed=seed, context=builder or ContextBuilder(p_context=0.9)
        )
        dataset.set_epoch(epoch)
        return [dataset.context_of(i) for i in range(len(dataset))]

    first = contexts()
    assert contexts() == first
    assert contexts(builder=pickle.loads(pickle.dumps(ContextBuilder(p_context=0.9)))) == first  # workers
    assert contexts(epoch=1) != first
    assert sum(a != b for a, b in zip(contexts(epoch=1), first, strict=True)) > len(first) // 2
    assert contexts(seed=1) != first
    assert [c for c in first if c[0]]  # not all empty
    # the item itself carries the same context; items stay the same for a given epoch
    dataset = ManifestAudioDataset(manifest, sample_rate=16000, context=ContextBuilder(p_context=0.9))
    assert (dataset[3]["context"], dataset[3]["keywords"]) == first[3]


def test_previous_mode_takes_the_previous_row_by_the_same_speaker():
    rows = [
        {"id": "0", "text": "a one", "speaker": "x"},
        {"id": "1", "text": "b one", "speaker": "y"},
        {"id": "2", "text": "a two", "speaker": "x"},
        {"id": "3", "text": "c one", "speaker": "z"},
        {"id": "4", "text": "b two", "speaker": "y"},
        {"id": "5", "text": "a three", "speaker": "x"},
        {"id": "6", "text": "none one"},
        {"id": "7", "text": "none two", "speaker": None},
    ]
    builder = ContextBuilder(mode="previous")
    got = [builder(rows, i, np.random.default_rng(i)) for i in range(len(rows))]
    assert [c for c, _ in got] == ["", "", "a one", "", "b one", "a two", "", ""]
    assert all(k == [] for _, k in got)
    by_voice = ContextBuilder(mode="previous", speaker_field="voice")
    assert (
        by_voice(
            [{"id": "a", "text": "hi", "voice": "v"}, {"id": "b", "voice": "v"}], 1, np.random.default_rng(0)
        )[0]
        == "hi"
    )


def test_column_mode_with_lists_and_keyword_columns():
    rows = [
        {
            "id": "0",
            "text": "call bob jones now",
            "context": ["Alice Smith", "Bob Jones"],
            "keywords": ["Bob"],
        },
        {"id": "1", "text": "call bob jones now", "context": ["Alice Smith", "Bob Jones"]},
        {"id": "2", "text": "message alice", "context": "Alice, Carol"},
        {"id": "3", "text": "nothing here"},
        {"id": "4", "text": "hello", "contacts": ["Hello Kitty"], "names": "Kitty"},
    ]
    builder = ContextBuilder(mode="column")
    rng = np.random.default_rng(0)
    assert builder(rows, 0, rng) == ("Alice Smith, Bob Jones", ["Bob"])
    assert builder(rows, 1, rng) == ("Alice Smith, Bob Jones", ["Bob", "Jones"])
    assert builder(rows, 2, rng) == ("Alice, Carol", ["Alice"])
    assert builder(rows, 3, rng) == ("", [])
    custom = ContextBuilder(mode="column", column="contacts", keywords_column="names", separator="; ")
    assert custom(rows, 4, rng) == ("Hello Kitty", ["Kitty"])
    assert custom([{**rows[4], "contacts": ["a", "b"]}], 0, rng)[0] == "a; b"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "neighbours"}, "unknown context mode"),
        ({"p_true": 1.5}, "p_true"),
        ({"p_context": -0.1}, "p_context"),
        ({"p_context": float("nan")}, "p_context"),
        ({"ngram": (0, 2)}, "ngram"),
        ({"ngram": (3, 2)}, "ngram"),
        ({"ngram": (1, 2, 3)}, "ngram"),
        ({"distractors": -1}, "distractors"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ContextBuilder(**kwargs)


def test_hydra_builds_it_from_a_config():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {"_target_": "datamodules.context.ContextBuilder", "ngram": [2, 3], "distractors": 1}
    )
    builder = instantiate(cfg)
    assert builder.ngram == (2, 3)
    _, keywords = builder(ROWS, 0, np.random.default_rng(0))
    assert len(keywords) in (0, 2, 3)


def test_datamodule_batches_carry_context_and_keywords(tmp_path):
    rows = [
        {"id": f"d{i}", "text": text, "speaker": "s"}
        for i, text in enumerate(["one two three", "four five", "six seven eight nine", "zero one"])
    ]
    path = write_manifest(tmp_path / "digits.jsonl", write_wavs(tmp_path, rows))
    texts = {row["id"]: row["text"] for row in rows}
    dm = AudioDataModule(
        train_manifest=str(path),
        val_manifest=str(path),
        test_manifests={"test": str(path)},
        batch_size=4,
        num_buckets=1,
        context=ContextBuilder(p_true=1.0, ngram=(1, 2), distractors=1),
    )
    dm.setup()
    assert all(dataset.context is dm.context for dataset in dm.datasets.values())
    (batch,) = list(dm.train_dataloader())
    assert batch["audio"].shape[0] == 4
    assert isinstance(batch["context"], list) and all(isinstance(c, str) and c for c in batch["context"])
    assert isinstance(batch["keywords"], list) and len(batch["keywords"]) == 4
    for item_id, context, keywords in zip(batch["id"], batch["context"], batch["keywords"], strict=True):
        assert (
            isinstance(keywords, list)
            and 1 <= len(keywords) <= 2
            and all(isinstance(w, str) for w in keywords)
        )
        assert tuple(keywords) in ngrams(texts[item_id]) and " ".join(keywords) in context.split(", ")
    (val,) = list(dm.val_dataloader())
    assert list(dm.val_dataloader())[0]["context"] == val["context"]  # evaluation contexts are fixed
    assert isinstance(dm.test_dataloader()[0].__iter__().__next__()["keywords"][0], list)
