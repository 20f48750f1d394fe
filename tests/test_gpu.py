"""Checks that need CUDA: bf16-mixed training steps on the GPU and two-process NCCL DDP. Skipped on machines
without a GPU (CI); run them on a GPU machine with `pytest -m gpu`."""

from __future__ import annotations

import math

import pytest
import torch

from experiments.core import tracking
from tests.conftest import run_python_module, tiny_overrides

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_two = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


@needs_cuda
def test_random_projection_labels_are_the_same_under_cuda_bf16():
    from research.ssl.targets import RandomProjectionQuantizer

    quantizer = RandomProjectionQuantizer(input_dim=320, codebook_size=8192, seed=0).cuda()
    feats = torch.randn(4, 100, 320, device="cuda") * 3 + 1
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = quantizer(feats)
    assert torch.equal(half, quantizer(feats))


@needs_cuda
def test_ctc_trains_in_bf16_mixed_on_the_gpu(tiny_data_dir, tmp_path, mlflow_store):
    result = run_python_module(
        "experiments.train",
        tiny_overrides(tiny_data_dir, tmp_path / "run", "trainer=gpu", "trainer.max_steps=4", "test=false"),
    )
    assert "bf16" in result.stdout + result.stderr
    client = tracking.client()
    (run,) = client.search_runs([client.get_experiment_by_name("asr_ctc_digits").experiment_id])
    assert (
        run.data.params["trainer/precision"] == "bf16-mixed"
        and run.data.params["trainer/accelerator"] == "gpu"
    )
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


@needs_two
def test_ctc_trains_with_nccl_ddp_on_two_gpus(tiny_data_dir, tmp_path, mlflow_store):
    result = run_python_module(
        "experiments.train",
        tiny_overrides(
            tiny_data_dir,
            tmp_path / "run",
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.max_steps=4",
            "test=false",
        ),
    )
    output = result.stdout + result.stderr
    assert "distributed_backend=nccl" in output and "Starting with 2 processes" in output
