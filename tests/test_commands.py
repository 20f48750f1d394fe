"""The commands as a user meets them: quick `--help`, one-line errors, safe checkpoints, the MLflow store."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from experiments.core.checkpoints import UnsafeCheckpointError, load_checkpoint
from tests.conftest import REPO, tiny_overrides

COMMANDS = {  # module: (--help arguments, a mistake in the arguments)
    "experiments.train": (["--help"], ["experiment=asr/nope"]),
    "experiments.eval": (["--help"], ["experiment=nope"]),
    "experiments.tokenize": (["encode", "--help"], ["encode", "--bogus"]),
    "experiments.teacher_features": (["--help"], ["--manifest", "m.jsonl"]),
    "experiments.luise": (["labels", "--help"], ["labels", "--run-id", "r"]),
    "experiments.pipeline": (["luise", "--help"], ["nope"]),
    "experiments.transcribe": (["--help"], ["--ckpt", "c", "--manifest", "m", "--out", "o", "--nbest", "3"]),
}


def run(module: str, args: list[str], cwd: pathlib.Path = REPO, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=environment, capture_output=True, text=True
    )


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_and_argument_errors_answer_before_torch_is_imported(module):
    """`--help` (status 0) and a mistake in the arguments (status 2) must answer before torch, Lightning or
    MLflow load: in a second, not the 17 s those imports take."""
    for args, status in zip(COMMANDS[module], (0, 2), strict=True):
        probe = (
            f"import sys, runpy; sys.argv = ['x', *{args!r}]\n"
            f"try:\n    runpy.run_module('{module}', run_name='__main__')\n"
            "except SystemExit as stop:\n    print('STATUS', stop.code or 0)\n"
            "print('HEAVY', [m for m in ('torch', 'lightning', 'mlflow') if m in sys.modules])\n"
        )
        result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
        assert f"STATUS {status}" in result.stdout and "HEAVY []" in result.stdout, (
            args,
            result.stderr[-2000:],
        )


def test_hydra_commands_refuse_an_unknown_experiment_in_one_line():
    result = run("experiments.train", ["experiment=asr/nope"])
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines() == [result.stderr.strip()]
        and "unknown experiment 'asr/nope'; known: " in result.stderr
        and all(name in result.stderr for name in ("asr/ctc_digits", "ssl/luise_iter1", "acllm/paper"))
    )


def test_a_missing_checkpoint_is_a_one_line_error(tmp_path):
    missing = tmp_path / "none.ckpt"
    result = run(
        "experiments.tokenize", ["decode", "--ckpt", str(missing), "--codes", "c.npy", "--out", "o.wav"]
    )
    assert result.returncode == 2 and result.stderr.strip() == f"error: checkpoint not found: {missing}"
    result = run("experiments.eval", [f"ckpt_path={missing}", f"paths.runs_dir={tmp_path}"])
    assert (
        result.returncode == 2
        and result.stderr.strip().splitlines()[-1] == f"error: checkpoint not found: {missing}"
    )


def test_a_bad_manifest_line_is_named_in_one_line(tiny_tokenizer_run, tmp_path):
    manifest = tmp_path / "bad.jsonl"
    row = {"id": "a", "audio_filepath": "a.wav", "duration": 1.0, "sample_rate": 16000}
    manifest.write_text(json.dumps(row) + "\n{not json\n")
    ckpt = str(tiny_tokenizer_run["ckpt"])
    result = run("experiments.tokenize", ["encode", "--ckpt", ckpt, "--manifest", str(manifest)])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.strip().splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: {manifest}:2: ")


class Payload:
    """What a malicious checkpoint would carry: unpickling it would create a file."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_checkpoint_with_a_pickled_payload_is_refused_and_nothing_of_it_runs(tmp_path):
    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "voxlab_config": {}, "extra": Payload(marker)}, crafted)
    with pytest.raises(
        UnsafeCheckpointError,
        match=r"crafted.ckpt: refused to open, it holds a pickled getattr; nothing of it was run",
    ):
        load_checkpoint(crafted)
    result = run(
        "experiments.tokenize", ["decode", "--ckpt", str(crafted), "--codes", "x.npy", "--out", "y.wav"]
    )
    assert result.returncode == 2 and "refused to open" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_a_run_from_another_directory_writes_to_the_repository_store(tiny_data_dir, tmp_path, monkeypatch):
    """No `./mlruns` in the working directory: the store is <root>/mlflow.db with <root>/mlartifacts."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    overrides = tiny_overrides(tiny_data_dir, tmp_path / "run", "trainer.max_steps=2", "test=false")
    result = run("experiments.train", overrides, cwd=elsewhere, VOXLAB_ROOT=str(root))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "mlflow.db").is_file() and any((root / "mlartifacts").rglob("config.yaml"))
    assert list(elsewhere.iterdir()) == []


def test_dumps_from_another_source_are_rebuilt(tmp_path, tiny_data_dir):
    import numpy as np

    from experiments.core.dumps import dump_per_utterance

    manifest = tiny_data_dir / "connected_digits" / "val.jsonl"

    def constant(value):
        return lambda audio, lens: [np.full((2, 1), value, dtype=np.int16) for _ in lens]

    settings = dict(
        column="x", rate=1.0, sample_rate=16000, out_dir=tmp_path / "x", out_manifest=tmp_path / "m.jsonl"
    )
    first = dump_per_utterance(manifest, compute=constant(1), made_by={"ckpt": "a"}, **settings)
    kept = dump_per_utterance(manifest, compute=constant(2), made_by={"ckpt": "a"}, **settings)
    assert first.written == 16 and kept.written == 0 and kept.reused == 16
    rebuilt = dump_per_utterance(manifest, compute=constant(3), made_by={"ckpt": "b"}, **settings)
    assert rebuilt.written == 16
    assert {int(np.load(p)[0, 0]) for p in (tmp_path / "x").glob("*.npy")} == {3}
    assert json.loads((tmp_path / "x" / "source.json").read_text()) == {"ckpt": "b"}

    # a rebuild interrupted after its first batch, then resumed: no array of source b survives
    def broken(audio, lens):
        if broken.calls:
            raise KeyboardInterrupt
        broken.calls += 1
        return constant(4)(audio, lens)

    broken.calls = 0
    with pytest.raises(KeyboardInterrupt):
        dump_per_utterance(manifest, compute=broken, made_by={"ckpt": "c"}, batch_size=4, **settings)
    resumed = dump_per_utterance(manifest, compute=constant(4), made_by={"ckpt": "c"}, **settings)
    assert resumed.reused == 4 and resumed.written == 12
    assert {int(np.load(p)[0, 0]) for p in (tmp_path / "x").glob("*.npy")} == {4}
