"""Runs through the real command line: a Hydra multirun sweep (also the fixture the run-comparison notebook is
executed on) and two-process DDP on CPU (gloo)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import execute_notebook, run_python_module, tiny_overrides


def finished_runs(uri: str, experiment: str = "asr_ctc_digits"):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


@pytest.fixture(scope="module")
def sweep_store(tiny_data_dir, tmp_path_factory) -> str:
    """A two-point learning-rate sweep in a private MLflow store, shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = tiny_overrides(tiny_data_dir, tmp_path / "unused", "test=false", "trainer.max_steps=3")
    overrides = [o for o in overrides if not o.startswith("paths.output_dir")]
    args = ["-m", *overrides, "model.optimizer.lr=1e-3,3e-3"]  # Hydra folders under tmp_path/runs
    run_python_module("experiments.train", args, env={"MLFLOW_TRACKING_URI": uri})
    return uri


@pytest.mark.slow
def test_two_point_sweep_gives_two_grouped_runs(sweep_store):
    mlflow_store = sweep_store
    runs = finished_runs(mlflow_store)
    parents = [r for r in runs if r.data.tags.get("voxlab.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent_id = parents[0].info.run_id
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent_id}
    assert {r.data.tags["voxlab.sweep_id"] for r in children} == {parent_id}
    assert sorted(r.data.params["model/optimizer/lr"] for r in children) == ["0.001", "0.003"]
    assert all("val/wer" in r.data.metrics for r in children)
    assert parents[0].info.status == "FINISHED"


@pytest.mark.slow
def test_ddp_sim_trains_with_two_processes_and_logs_one_run(tiny_data_dir, tmp_path, mlflow_store):
    result = run_python_module(
        "experiments.train",
        [
            *tiny_overrides(
                tiny_data_dir, tmp_path / "run", "trainer=ddp_sim", "trainer.max_steps=4", "test=false"
            )
        ],
    )
    output = result.stdout + result.stderr
    assert "distributed_backend=gloo" in output and "Starting with 2 processes" in output
    runs = finished_runs(mlflow_store)
    assert len(runs) == 1
    run = runs[0]
    assert {"train/loss", "val/wer", "val/cer"} <= set(run.data.metrics)
    assert run.data.params["trainer/devices"] == "2"


@pytest.mark.slow
def test_compare_runs_notebook_executes_on_the_sweep(sweep_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sweep_store)
    outputs, images = execute_notebook("compare_runs")
    assert "best run" in outputs and "val/wer" in outputs
    assert "1 audio clips, 1 figures" in outputs  # one validation (step 3) logged one clip and one figure
    assert images >= 2  # the metric-vs-parameter plot and the best run's figure
