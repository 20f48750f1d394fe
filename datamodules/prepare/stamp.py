"""Skip a preparation whose outputs exist and were made with the same settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

STAMP = "prepared.json"


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_prepared(out_dir: Path, settings: dict[str, Any], outputs: list[Path]) -> bool:
    stamp = out_dir / STAMP
    if not stamp.is_file() or not all(p.is_file() for p in outputs):
        return False
    return json.loads(stamp.read_text()).get("hash") == settings_hash(settings)


def mark_prepared(out_dir: Path, settings: dict[str, Any]) -> None:
    payload = {"hash": settings_hash(settings), "settings": settings}
    (out_dir / STAMP).write_text(json.dumps(payload, indent=2, default=str))
