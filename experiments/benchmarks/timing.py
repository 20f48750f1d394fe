"""Timing helpers shared by the speed benchmarks: step times under a Lightning Trainer, best-of timing, and training
arms run alternately in fresh processes (so each arm's peak memory is its own and machine noise hits both)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def random_audio_batch(seconds: float, batch: int, sample_rate: int = 16000) -> dict:
    """A seeded batch of full-length noise clips (timing does not depend on the audio)."""
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(batch, 1, int(sample_rate * seconds), generator=generator) * 0.1
    return {"audio": audio, "audio_lens": torch.full((batch,), audio.shape[-1])}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _StepTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, *args):
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.times.append(time.perf_counter() - self.start)


def lightning_step_times(
    module: L.LightningModule, batch: dict, steps: int, optimizers: int = 1
) -> list[float]:
    """Seconds per training batch of `module` fitted on `batch` repeated `steps` times, on CPU, no logger
    (`optimizers`: optimizer steps per batch, which Lightning counts as global steps: 2 for a GAN)."""
    timer = _StepTimer()
    trainer = L.Trainer(
        max_steps=steps * optimizers,
        # what a module writes at fit end (an adapter export) goes there, not into the working directory
        default_root_dir=tempfile.mkdtemp(prefix="voxlab_timing_"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        accelerator="cpu",
    )
    trainer.fit(module, DataLoader([batch] * steps, batch_size=None))
    return timer.times


def alternate_arms(module: str, arms: list[str], rounds: int, args: list[str]) -> dict[str, list[dict]]:
    """Run `python -m <module> --arm <arm> <args>` for every arm, `rounds` times alternating; each prints one JSON
    line last. Returns arm -> the parsed results."""
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    for _ in range(rounds):
        for arm in arms:
            command = [sys.executable, "-m", module, "--arm", arm, *args]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[arm].append(json.loads(output.strip().splitlines()[-1]))
    return results
