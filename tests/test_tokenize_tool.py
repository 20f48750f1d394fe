"""`python -m experiments.tokenize` and `experiments.teacher_features` on the tiny tokenizer trained in conftest."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules.audio_datamodule import AudioDataModule
from datamodules.manifest import read_manifest
from experiments import teacher_features, tokenize
from experiments.core import tokens
from research.audio import load_audio
from tests.conftest import execute_notebook, run_python_module


@pytest.fixture(scope="module")
def codec(tiny_tokenizer_run):
    return tokens.load_codec(ckpt=str(tiny_tokenizer_run["ckpt"]))


def test_encode_manifest_by_run_id_writes_codes_and_column(tiny_tokenizer_run, tmp_path):
    manifest = tiny_tokenizer_run["data_dir"] / "connected_digits" / "test.jsonl"
    out_manifest = tmp_path / "test_codes.jsonl"
    result = run_python_module(
        "experiments.tokenize",
        [
            "encode",
            "--run-id",
            tiny_tokenizer_run["run_id"],
            "--manifest",
            str(manifest),
            "--out-dir",
            str(tmp_path / "codes"),
            "--out-manifest",
            str(out_manifest),
        ],
        env={"MLFLOW_TRACKING_URI": tiny_tokenizer_run["uri"]},
    )
    assert "16 encoded, 0 kept, 0 failed" in result.stdout
    rows = read_manifest(out_manifest).rows
    assert len(rows) == 16 and all(row["codes_rate"] == 50.0 for row in rows)
    for row in rows:
        codes = np.load(out_manifest.parent / row["codes"])
        assert codes.dtype == np.int16 and codes.shape == (math.ceil(row["duration"] * 16000 / 320), 4)
        assert codes.min() >= 0 and codes.max() < 64
    # the new manifest still finds its audio, and its codes load as a frame-aligned array field
    datamodule = AudioDataModule(
        val_manifest=str(out_manifest), view="crops", crop_seconds=0.5, array_fields=["codes"]
    )
    datamodule.setup("validate")
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["codes"].shape[1:] == (25, 4) and batch["codes_lens"].max() == 25


def test_batched_encoding_matches_one_by_one_and_resumes(codec, tiny_tokenizer_run, tmp_path):
    manifest = tiny_tokenizer_run["data_dir"] / "connected_digits" / "val.jsonl"
    first = tokens.encode(codec, manifest=str(manifest), out_dir=str(tmp_path / "c"), batch_size=1)
    assert first.written == 16 and first.manifest.name == "val_codes.jsonl"
    again = tokens.encode(codec, manifest=str(manifest), out_dir=str(tmp_path / "c"), batch_size=4)
    assert again.written == 0 and again.reused == 16
    row = read_manifest(manifest).rows[0]
    wave = load_audio(manifest.parent / row["audio_filepath"], sample_rate=16000)
    expected = codec.encode(wave[None])[:, 0].T.numpy()
    assert np.array_equal(np.load(tmp_path / "c" / f"{row['id']}.npy"), expected)


def test_decode_resynth_and_convert(codec, tiny_tokenizer_run, tmp_path):
    rows = read_manifest(tiny_tokenizer_run["data_dir"] / "connected_digits" / "test.jsonl").rows
    audio = [str(tiny_tokenizer_run["data_dir"] / "connected_digits" / r["audio_filepath"]) for r in rows[:2]]
    tokens.encode(codec, audio=audio, out_dir=str(tmp_path / "codes"))
    codes_file = tmp_path / "codes" / f"{rows[0]['id']}.npy"
    frames = np.load(codes_file).shape[0]
    ckpt = str(tiny_tokenizer_run["ckpt"])
    assert (
        tokenize.main(
            ["decode", "--ckpt", ckpt, "--codes", str(codes_file), "--out", str(tmp_path / "d.wav")]
        )
        == 0
    )
    decoded, rate = sf.read(tmp_path / "d.wav", dtype="float32")
    assert rate == 16000 and len(decoded) == frames * 320
    with torch.no_grad():
        expected = codec.decode(torch.from_numpy(np.load(codes_file).astype(np.int64)).T[:, None, :])[0, 0]
    assert np.abs(decoded - np.clip(expected.numpy(), -1, 1)).max() < 1e-4  # 16-bit PCM of the decoded audio
    codes = torch.from_numpy(np.load(codes_file).astype(np.int64)).T[:, None, :]  # (n_q, 1, frames)
    one_level = tokens.decode_file(codec, str(codes_file), levels=1)
    with torch.no_grad():
        assert torch.allclose(one_level, codec.decode(codes[:1])[0])
        assert torch.allclose(tokens.decode_file(codec, str(codes_file)), codec.decode(codes)[0])
    assert not torch.allclose(one_level, codec.decode(codes)[0])  # RVQ-2..4 add something
    out = tmp_path / "r.wav"
    assert (
        tokenize.main(["resynth", "--ckpt", ckpt, "--audio", audio[0], "--levels", "1", "--out", str(out)])
        == 0
    )
    assert sf.info(out).frames == sf.info(audio[0]).frames * 16000 // sf.info(audio[0]).samplerate
    out = tmp_path / "vc.wav"
    assert (
        tokenize.main(
            ["convert", "--ckpt", ckpt, "--content", audio[0], "--voice", audio[1], "--out", str(out)]
        )
        == 0
    )
    content_frames = codec.frames(sf.info(audio[0]).frames * 16000 // sf.info(audio[0]).samplerate)
    voice_frames = codec.frames(sf.info(audio[1]).frames * 16000 // sf.info(audio[1]).samplerate)
    assert sf.info(out).frames == min(content_frames, voice_frames) * 320


def test_unreadable_input_is_named_and_the_rest_continue(tiny_tokenizer_run, tmp_path, capsys, caplog):
    good = tmp_path / "good.wav"
    sf.write(good, (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32), 16000)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really audio")
    status = tokenize.main(
        [
            "encode",
            "--ckpt",
            str(tiny_tokenizer_run["ckpt"]),
            "--audio",
            str(broken),
            str(good),
            "--out-dir",
            str(tmp_path / "codes"),
        ]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "FAILED" in err and "broken.wav" in err
    assert "broken.wav" in caplog.text and ".jsonl" not in err + caplog.text  # no manifest given: none named
    assert (tmp_path / "codes" / "good.npy").is_file() and not (tmp_path / "codes" / "broken.npy").exists()
    with pytest.raises(FileNotFoundError):
        tokens.load_codec(ckpt=str(tmp_path / "missing.ckpt"))


def test_teacher_features_round_trip_through_the_datamodule(
    tiny_tokenizer_run, tiny_ctc_checkpoint, tmp_path
):
    source = tiny_tokenizer_run["data_dir"] / "connected_digits" / "val.jsonl"
    manifest = tmp_path / "val.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({**row, "audio_filepath": str(source.parent / row["audio_filepath"])}) + "\n"
            for row in read_manifest(source).rows
        )
    )
    status = teacher_features.main(
        ["--manifest", str(manifest), "--ckpt", str(tiny_ctc_checkpoint), "--layer", "1"]
    )
    assert status == 0
    rows = read_manifest(tmp_path / "val_teacher_features.jsonl").rows
    assert all(row["teacher_features_rate"] == 25.0 for row in rows)
    datamodule = AudioDataModule(
        val_manifest=str(tmp_path / "val_teacher_features.jsonl"),
        view="crops",
        crop_seconds=0.4,
        array_fields=["teacher_features"],
    )
    datamodule.setup("validate")
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["teacher_features"].shape[1:] == (10, 32)  # 0.4 s at 25 Hz, d_model 32


def test_explore_tokens_notebook_executes_on_the_tiny_tokenizer(tiny_tokenizer_run, monkeypatch):
    monkeypatch.setenv("VOXLAB_TOKENIZER_CKPT", str(tiny_tokenizer_run["ckpt"]))
    monkeypatch.setenv(
        "VOXLAB_DIGITS_MANIFEST", str(tiny_tokenizer_run["data_dir"] / "connected_digits" / "test.jsonl")
    )
    outputs, images = execute_notebook("explore_tokens")
    assert "4 levels [64, 64, 64, 64] at 50 Hz = 1200 bit/s" in outputs
    assert "level1/perplexity" in outputs and "most frequent RVQ-1 codes" in outputs
    assert images >= 3  # code heatmap, codebook usage, RVQ-1 alignment
    assert outputs.count("IPython.lib.display.Audio") >= 5  # original, k = 1, 2, 4 levels, voices, conversion
