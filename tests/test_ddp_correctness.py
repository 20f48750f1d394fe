"""DDP correctness with two gloo processes on the CPU: a rank whose batch is all bad audio takes the same backward
and optimizer step as the others (no hang, identical weights), and exact resume restores each rank's own RNG
states. Every worker runs in a spawned process that the test kills when it runs past its timeout."""

from __future__ import annotations

import os
import random
import socket
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_modules.callbacks import ResumeState
from lit_modules.ctc_asr import CTCASRModule
from lit_modules.luise import LUISEModule
from research.asr.ctc import ConformerCTC
from research.encoder import SUBSAMPLING, ConformerEncoder
from research.ssl.targets import RandomProjectionQuantizer

WORLD_SIZE = 2
TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(worker, *args) -> None:
    """Runs worker(rank, *args) in WORLD_SIZE spawned processes; fails on an error or after TIMEOUT_S (a hang)."""
    context = mp.start_processes(
        worker, args=(free_port(), *args), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD_SIZE} ranks did not finish within {TIMEOUT_S} s: a deadlock")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()


def distributed_env(rank: int, port: int) -> None:
    """The environment that a launcher (torchrun) sets: Lightning joins it instead of spawning its own ranks."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD_SIZE),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
    )
    torch.set_num_threads(1)


# --- an empty batch on one rank ---------------------------------------------------------------------------------
def tiny_encoder() -> ConformerEncoder:
    return ConformerEncoder(d_model=16, num_layers=1, num_heads=2, ffn_dim=32, subsampling_channels=4)


def build_module(kind: str) -> L.LightningModule:
    torch.manual_seed(0)  # the same initial weights on both ranks (DDP also broadcasts rank 0's)
    optimizer = partial(torch.optim.AdamW, lr=1e-2)
    if kind == "tokenizer":  # its quantizer all-reduces EMA statistics inside the forward
        from tests.test_tokenizer_training import tiny_module

        return tiny_module(adversarial_start_step=0)
    if kind == "ctc":
        return CTCASRModule(net=ConformerCTC(encoder=tiny_encoder()), optimizer=optimizer, log_examples=0)
    quantizer = RandomProjectionQuantizer(input_dim=SUBSAMPLING * 80, codebook_size=16)
    return LUISEModule(
        encoder=tiny_encoder(), optimizer=optimizer, quantizer=quantizer, mask_start_prob=0.1, mask_span=4
    )


def rank_batches(rank: int, steps: int) -> list[dict]:
    """Different audio on each rank; rank 1's first batch lost every item as bad audio."""
    generator = torch.Generator().manual_seed(100 + rank)
    batches = []
    for step in range(steps):
        if rank == 1 and step == 0:
            batch = {"audio": torch.zeros(0, 1, 0), "audio_lens": torch.zeros(0, dtype=torch.long)}
            batches.append({**batch, "n_skipped": 2})
            continue
        audio = torch.randn(2, 1, 4000, generator=generator) * 0.1
        batches.append(
            {
                "audio": audio,
                "audio_lens": torch.tensor([4000, 3200]),
                "text": ["one", "two"],
                "id": [f"r{rank}s{step}a", f"r{rank}s{step}b"],
                "n_skipped": 0,
            }
        )
    return batches


def empty_batch_worker(rank: int, port: int, kind: str, out_dir: str, steps: int) -> None:
    distributed_env(rank, port)
    module = build_module(kind)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=WORLD_SIZE,
        strategy="ddp",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    loader = torch.utils.data.DataLoader(rank_batches(rank, steps), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    torch.save(
        {"global_step": trainer.global_step, "state": module.state_dict()}, Path(out_dir) / f"rank{rank}.pt"
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ctc", "luise", "tokenizer"])
def test_empty_batch_on_one_rank_neither_hangs_nor_desynchronises(kind, tmp_path):
    steps = 3
    run_ranks(empty_batch_worker, kind, str(tmp_path), steps)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    # the tokenizer steps both optimizers per batch, and every rank leaves the empty batch out together
    expected = {"ctc": steps, "luise": steps, "tokenizer": 2 * (steps - 1)}[kind]
    assert [r["global_step"] for r in ranks] == [expected] * WORLD_SIZE
    initial = build_module(kind).state_dict()
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
    changed = [name for name, value in ranks[0]["state"].items() if not torch.equal(value, initial[name])]
    assert changed  # it did train


# --- per-rank RNG states on resume ------------------------------------------------------------------------------
NUMPY_STATE_GLOBALS = [np.ndarray, np.dtype, np.dtypes.UInt32DType, np._core.multiarray._reconstruct]


def draws() -> tuple[list[float], list[float], list[float]]:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def resume_worker(rank: int, port: int, out_dir: str) -> None:
    distributed_env(rank, port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        L.seed_everything(10 + rank, verbose=False)  # ranks in different RNG states
        draws()
        trainer = SimpleNamespace(loggers=[], global_rank=rank, world_size=WORLD_SIZE)
        checkpoint: dict = {}
        ResumeState().on_save_checkpoint(trainer, None, checkpoint)
        path = Path(out_dir) / "last.ckpt"
        if rank == 0:  # as Lightning does: every rank builds the checkpoint, rank 0 writes it
            torch.save(checkpoint, path)
        expected = draws()
        dist.barrier()
        L.seed_everything(999, verbose=False)  # a fresh process: some other state
        with torch.serialization.safe_globals(NUMPY_STATE_GLOBALS):
            loaded = torch.load(path, weights_only=True)
        ResumeState().on_load_checkpoint(trainer, None, loaded)
        torch.save({"expected": expected, "resumed": draws()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_resume_restores_each_ranks_own_rng_states(tmp_path):
    run_ranks(resume_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    for rank, result in enumerate(ranks):
        assert result["resumed"] == result["expected"], f"rank {rank} did not continue its own sequence"
    assert ranks[0]["expected"] != ranks[1]["expected"]


def test_resume_with_another_world_size_falls_back_to_rank_zero_with_a_warning():
    callback = ResumeState()
    states = []
    for seed in (1, 2):
        L.seed_everything(seed, verbose=False)
        checkpoint: dict = {}
        callback.on_save_checkpoint(SimpleNamespace(loggers=[]), None, checkpoint)
        states.append(checkpoint["rng_states"][0])
        if seed == 1:
            expected = draws()
    single = SimpleNamespace(loggers=[], global_rank=0, world_size=1)
    with pytest.warns(UserWarning, match="RNG states of 2 rank"):
        callback.on_load_checkpoint(single, None, {"rng_states": states})
    assert draws() == expected
    # a checkpoint written before per-rank states (the saving rank's dict) restores as before
    L.seed_everything(5, verbose=False)
    callback.on_load_checkpoint(single, None, {"rng_states": states[0]})
    assert draws() == expected
