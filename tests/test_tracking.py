import subprocess

from mlflow.store.db.utils import create_sqlalchemy_engine

from experiments.core import tracking


def test_flatten_nested_config():
    config = {"model": {"optimizer": {"lr": 1e-3}, "layers": [1, 2]}, "seed": 3, "empty": {}}
    assert tracking.flatten(config) == {
        "model/optimizer/lr": "0.001",
        "model/layers": "[1, 2]",
        "seed": "3",
        "empty": "{}",
    }


def test_default_store_is_sqlite_beside_the_repo_with_busy_timeout(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.tracking_uri()
    assert uri == f"sqlite:///{tracking.ROOT / 'mlflow.db'}?timeout={tracking.SQLITE_BUSY_TIMEOUT_S}"
    engine = create_sqlalchemy_engine(uri.replace(str(tracking.ROOT / "mlflow.db"), "/tmp/voxlab_probe.db"))
    assert engine.dialect.create_connect_args(engine.url)[1]["timeout"] == tracking.SQLITE_BUSY_TIMEOUT_S
    assert tracking.artifact_location("asr/x") == (tracking.ROOT / "mlartifacts" / "asr_x").as_uri()
    executable, arguments = tracking.ui_command().split(" ", 1)
    assert arguments == f"ui --backend-store-uri sqlite:///{tracking.ROOT / 'mlflow.db'} --port 5000"
    # the printed command works from a plain shell, without the virtualenv on PATH
    plain = subprocess.run(
        [executable, "--version"], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True
    )
    assert plain.returncode == 0 and "version" in plain.stdout


def test_server_store_chooses_its_own_artifact_location(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.artifact_location("x") is None
