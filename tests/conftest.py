"""Shared fixtures: a tiny connected-digit set built from the FSDD mirror, a private MLflow store per test,
and Hydra configs shrunk to a model that trains in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("VOXLAB_MIRROR", REPO.parent / "shared" / "data"))
TINY_COUNTS = "{train: 48, val: 16, test: 16, test_heldout: 16}"

TINY_MODEL = [
    "model.net.encoder.d_model=32",
    "model.net.encoder.num_layers=1",
    "model.net.encoder.num_heads=2",
    "model.net.encoder.ffn_dim=64",
    "model.net.encoder.subsampling_channels=8",
    "model.net.encoder.dropout=0.1",
    "model.scheduler.warmup_steps=2",
]


def tiny_overrides(data_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "experiment=asr/ctc_digits",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={output_dir}",
        f"paths.mirror_dir={MIRROR}",
        f"data.preparers.connected_digits.counts={TINY_COUNTS}",
        "data.batch_size=8",
        "data.num_workers=0",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "data.num_buckets=2",
        "trainer.log_every_n_steps=1",
        "callbacks.progress_bar.refresh_rate=0",
        *TINY_MODEL,
        *extra,
    ]


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "fsdd" / "recordings").is_dir():
        pytest.skip(f"FSDD mirror not found at {MIRROR} (set VOXLAB_MIRROR)")
    return MIRROR


@pytest.fixture(scope="session")
def tiny_data_dir(mirror: Path, tmp_path_factory) -> Path:
    """Prepared once per session; configs pointing at it reuse it (the preparer skips finished work)."""
    from datamodules.prepare import prepare_connected_digits

    data_dir = tmp_path_factory.mktemp("data")
    prepare_connected_digits(
        out_dir=data_dir / "connected_digits",
        mirror=str(mirror),
        counts={"train": 48, "val": 16, "test": 16, "test_heldout": 16},
    )
    return data_dir


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def compose_config():
    """compose_config(overrides, config_name="train") -> DictConfig, the way the entry points see it."""

    def _compose(overrides: list[str], config_name: str = "train"):
        with initialize_config_module(config_module="experiments.configs", version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)

    return _compose


def run_python_module(module: str, args: list[str], env: dict | None = None, timeout: int = 600):
    """Run `python -m <module> args...` from the repo root, as a user would; fails the test on a non-zero exit."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def sine(seconds: float, sample_rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave
