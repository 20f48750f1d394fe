"""Run comparison helpers behind notebooks/compare_runs: list runs, plot a metric against a swept parameter,
pick the best run and fetch its artifacts."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from experiments.core import tracking
from experiments.core.tracking import tracking_uri


def list_runs(experiment: str, *, include_sweep_parents: bool = False) -> pd.DataFrame:
    """Every run of an MLflow experiment as a DataFrame (columns params.*, metrics.*, tags.*)."""
    mlflow.set_tracking_uri(tracking_uri())
    runs = mlflow.search_runs(experiment_names=[experiment], order_by=["attributes.start_time DESC"])
    if runs.empty:
        raise LookupError(f"no runs in MLflow experiment '{experiment}' at {tracking_uri()}")
    if not include_sweep_parents and "tags.voxlab.role" in runs:
        runs = runs[runs["tags.voxlab.role"] != "sweep"]
    return runs.reset_index(drop=True)


def metric_vs_param(runs: pd.DataFrame, *, metric: str, param: str) -> pd.DataFrame:
    """(param, metric, run_id) rows sorted by the parameter, parameters parsed as numbers when they are."""
    table = runs[[f"params.{param}", f"metrics.{metric}", "run_id"]].dropna()
    table.columns = [param, metric, "run_id"]
    with contextlib.suppress(ValueError, TypeError):  # a categorical parameter stays as text
        table[param] = pd.to_numeric(table[param])
    return table.sort_values(param).reset_index(drop=True)


def plot_metric_vs_param(runs: pd.DataFrame, *, metric: str, param: str, log_x: bool = True):
    import matplotlib.pyplot as plt

    table = metric_vs_param(runs, metric=metric, param=param)
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(table[param], table[metric], "o-")
    if log_x and pd.api.types.is_numeric_dtype(table[param]):
        axis.set_xscale("log")
    axis.set_xlabel(param)
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def best_run(runs: pd.DataFrame, *, metric: str, mode: str = "min") -> pd.Series:
    column = f"metrics.{metric}"
    scored = runs.dropna(subset=[column])
    if scored.empty:
        raise LookupError(f"no run logged {metric}")
    return scored.loc[scored[column].idxmin() if mode == "min" else scored[column].idxmax()]


def fetch_artifacts(
    run_id: str, folder: str = "", *, suffix: str | None = None, dst: str | None = None
) -> list[Path]:
    """Download a run's artifacts under `folder` (recursively) and return the local files, newest step last."""
    client = tracking.client()
    local = Path(client.download_artifacts(run_id, folder, dst or tempfile.mkdtemp(prefix="voxlab_")))
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    return [p for p in files if suffix is None or p.suffix == suffix]
