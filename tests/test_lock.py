"""requirements.lock (what `make install` installs) agrees with pyproject.toml: every declared dependency is
locked at a version its specifier allows, with hashes, and torchaudio is locked beside its own torch."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO


def locked_versions() -> dict[str, str]:
    text = (REPO / "requirements.lock").read_text()
    pins = re.findall(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;\\]+)", text, flags=re.M)
    return {canonicalize_name(name.split("[")[0]): version for name, version in pins}


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    names = [*project["dependencies"], *extras["test"]]
    return [Requirement(r) for r in names if not r.startswith("voxlab")]


def test_every_declared_dependency_is_locked_within_its_specifier():
    locked = locked_versions()
    problems = []
    for requirement in declared():
        version = locked.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name} is not in requirements.lock")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}=={version} breaks pyproject's '{requirement}'")
    assert not problems, "run `make lock`: " + "; ".join(problems)


def test_lock_pins_hashes_and_torchaudio_matches_torch():
    text = (REPO / "requirements.lock").read_text()
    entries = [e for e in re.split(r"\n(?=[A-Za-z0-9])", text) if "==" in e.split("\n")[0]]
    assert len(entries) >= len(locked_versions()) > 100  # a package may be locked per platform
    unhashed = [e.split()[0] for e in entries if "--hash=sha256:" not in e]
    assert not unhashed, f"entries without hashes (uv pip install --require-hashes refuses them): {unhashed}"
    locked = locked_versions()
    assert locked["torchaudio"] == locked["torch"]  # PyPI's torchaudio loads only beside its exact torch
