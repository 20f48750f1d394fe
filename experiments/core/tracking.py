"""MLflow helpers: where runs live, what every run records, sweep grouping and finding a run's checkpoint.

Default store: sqlite:///<repo>/mlflow.db with artifacts in <repo>/mlartifacts (MLflow >= 3.13 refuses plain folder
stores). MLFLOW_TRACKING_URI points runs at a server instead, which is also the way to go for many parallel writers:
sqlite serialises writers, and the busy timeout below only makes a handful of concurrent jobs wait instead of fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
from hydra.experimental.callback import Callback
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from experiments.core.cli import ROOT

SQLITE_BUSY_TIMEOUT_S = 60
PARENT_RUN_FILE = "mlflow_parent_run_id"
TAG_PREFIX = "voxlab."


def tracking_uri() -> str:
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{ROOT / 'mlflow.db'}?timeout={SQLITE_BUSY_TIMEOUT_S}"
    )


def artifact_location(experiment_name: str) -> str | None:
    """Artifacts beside a sqlite store (a folder per experiment); a tracking server chooses its own."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///").split("?")[0])
    return (database.parent / "mlartifacts" / experiment_name.replace("/", "_")).as_uri()


def ui_command(uri: str | None = None) -> str:
    """A command that opens the runs from any shell: the mlflow beside this Python (a plain shell has no venv)."""
    uri = (uri or tracking_uri()).split("?")[0]
    if not uri.startswith("sqlite:"):
        return f"open {uri}"
    beside = Path(sys.executable).parent / "mlflow"
    return f"{beside if beside.is_file() else 'mlflow'} ui --backend-store-uri {uri} --port 5000"


def client() -> MlflowClient:
    """The one way voxlab opens the tracking store: never a bare MlflowClient(), which writes ./mlruns."""
    return MlflowClient(tracking_uri())


def experiment_id(name: str) -> str:
    """Id of the MLflow experiment `name`, created with its artifacts beside the store if new."""
    store = client()
    experiment = store.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return store.create_experiment(name, artifact_location=artifact_location(name))


OmegaConf.register_new_resolver("voxlab.root", lambda: str(ROOT), replace=True)
OmegaConf.register_new_resolver("voxlab.tracking_uri", tracking_uri, replace=True)
OmegaConf.register_new_resolver("voxlab.artifact_location", artifact_location, replace=True)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"model": {"optimizer": {"lr": 1e-3}}} -> {"model/optimizer/lr": "0.001"}."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = str(value)
    return flat


def git_state(root: Path = ROOT) -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        return {"git.commit": git("rev-parse", "HEAD"), "git.dirty": str(bool(git("status", "--porcelain")))}
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}


def record_run(logger: MLFlowLogger, config: DictConfig, tags: dict[str, str]) -> None:
    """Log the resolved config (flattened params + config.yaml), git state and tags to the logger's run.

    When a resumed run continues an existing MLflow run, params it already has are left as they are (MLflow
    refuses to change a param) and the new config is stored as another yaml artifact.
    """
    store: MlflowClient = logger.experiment
    run = store.get_run(logger.run_id)
    resolved = OmegaConf.to_container(config, resolve=True)
    params = {k: v[:6000] for k, v in flatten(resolved).items() if k not in run.data.params}
    items = list(params.items())
    for start in range(0, len(items), 100):  # MLflow's per-request limit
        batch = [mlflow.entities.Param(k, v) for k, v in items[start : start + 100]]
        store.log_batch(logger.run_id, params=batch)
    for key, value in {**git_state(), **tags}.items():
        store.set_tag(logger.run_id, key, value)
    name = "config.yaml" if not run.data.params else time.strftime("config_resumed_%Y%m%d-%H%M%S.yaml")
    store.log_text(logger.run_id, OmegaConf.to_yaml(resolved), name)


def sweep_parent_run_id(sweep_dir: str | Path) -> str | None:
    path = Path(sweep_dir) / PARENT_RUN_FILE
    return path.read_text().strip() if path.is_file() else None


class SweepGrouping(Callback):
    """Hydra callback: a multirun opens one parent MLflow run; every job becomes its child and carries its id as
    the `voxlab.sweep_id` tag. The parent id is written into the sweep folder, which SLURM jobs also see."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        mlflow_cfg = config.get("logger", {}).get("mlflow") if config.get("logger") else None
        if not mlflow_cfg:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        run = client().create_run(
            experiment_id(mlflow_cfg.experiment_name),
            run_name=f"sweep {sweep_dir.name}",
            tags={f"{TAG_PREFIX}sweep_dir": str(sweep_dir), f"{TAG_PREFIX}role": "sweep", **git_state()},
        )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(run.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        run_id = sweep_parent_run_id(config.hydra.sweep.dir)
        if run_id:
            client().set_terminated(run_id)


def checkpoint_from_run(run_id: str, which: str = "last") -> Path:
    """The checkpoint a training run recorded (`voxlab.checkpoint_dir` tag): 'last' or 'best'."""
    run = client().get_run(run_id)
    tag = f"{TAG_PREFIX}checkpoint_{which}"
    path = run.data.tags.get(tag)
    if not path:
        folder = run.data.tags.get(f"{TAG_PREFIX}checkpoint_dir")
        path = str(Path(folder) / "last.ckpt") if folder else None
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"run {run_id} has no {which} checkpoint on this machine (tag {tag}: {path})")
    return Path(path)
