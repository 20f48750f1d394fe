import json

import pytest

from datamodules.manifest import ManifestError, read_manifest, write_manifest


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"id": "a", "audio_filepath": "a.wav", "duration": 1.0, "sample_rate": 16000, "text": "one"}


def test_missing_field_names_file_and_line(tmp_path):
    row = dict(GOOD, id="b")
    del row["duration"]
    path = write_lines(tmp_path / "m.jsonl", [GOOD, row])
    with pytest.raises(ManifestError, match=rf"{path}:2: missing field 'duration'"):
        read_manifest(path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "invalid JSON"),
        (dict(GOOD, duration="long"), "field 'duration' should be"),
        (dict(GOOD, sample_rate=0), "must be positive"),
        (dict(GOOD, text=3), "field 'text' should be a string"),
        (GOOD, "duplicate id 'a'"),
    ],
)
def test_schema_errors(tmp_path, bad, message):
    path = write_lines(tmp_path / "m.jsonl", [GOOD, bad])
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_view_required_field(tmp_path):
    row = dict(GOOD)
    del row["text"]
    path = write_lines(tmp_path / "m.jsonl", [row])
    assert len(read_manifest(path)) == 1
    with pytest.raises(ManifestError, match=r"m.jsonl:1: missing field 'text'"):
        read_manifest(path, required=("text",))


def test_paths_are_written_relative_to_the_manifest(tmp_path):
    audio = tmp_path / "audio" / "x.wav"
    audio.parent.mkdir()
    audio.write_bytes(b"")
    path = write_manifest(tmp_path / "manifests" / "m.jsonl", [dict(GOOD, audio_filepath=str(audio))])
    row = json.loads(path.read_text())
    assert row["audio_filepath"] == "../audio/x.wav"
    assert read_manifest(path).audio_path(0) == audio.resolve()
