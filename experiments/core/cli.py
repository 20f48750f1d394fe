"""What every command shares: the checkpoint-source argument group, and user errors printed as one line.

Commands import only this module and argparse before parsing, so `--help` and argument errors answer at once;
torch, Lightning and MLflow are imported after."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
ROOT = Path(os.environ.get("VOXLAB_ROOT", Path(__file__).resolve().parents[2]))  # the repository


def data_dir() -> Path:
    """Prepared manifests and derived data: `VOXLAB_DATA`, else <repository>/data (as `paths.data_dir`)."""
    return Path(os.environ.get("VOXLAB_DATA", ROOT / "data"))


class UserError(Exception):
    """A mistake in what the user gave (a missing file, a bad manifest line, an unknown name): one line, exit 2."""


def add_checkpoint_source(parser: argparse.ArgumentParser, what: str = "a training run"):
    """--run-id RUN | --ckpt PATH, exactly one of them; returns the group, for other alternative sources."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-id", help=f"MLflow run id of {what}")
    source.add_argument("--ckpt", help=f"checkpoint of {what} (written by experiments.train)")
    return source


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input, not a bug: reported in one line without a traceback."""
    from datamodules.manifest import ManifestError
    from research.audio import BadAudioError

    return UserError, ManifestError, BadAudioError, FileNotFoundError


def run_command(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's `main`; a user error prints `error: <message>` and exits with status 2."""
    try:
        return int(main(argv) or 0)
    except Exception as error:
        if not isinstance(error, user_errors()):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


def experiment_names() -> list[str]:
    """Every `experiment=<name>` that exists, e.g. 'asr/ctc_digits'."""
    folder = CONFIG_DIR / "experiment"
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


def check_experiment(overrides: Iterable[str]) -> None:
    """Raise a UserError naming the known experiments when an `experiment=` override names none of them (sweep
    syntax, `a,b` or `glob(...)`, is left to Hydra)."""
    for override in overrides:
        if override.lstrip("+").startswith("experiment="):
            name = override.split("=", 1)[1]
            if not any(mark in name for mark in ",(*") and name not in experiment_names():
                raise UserError(f"unknown experiment '{name}'; known: {', '.join(experiment_names())}")


def hydra_command(main: Callable[[], object]) -> None:
    """Start a Hydra command; an unknown `experiment=` is reported in one line before Hydra starts."""
    try:
        check_experiment(sys.argv[1:])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    main()
