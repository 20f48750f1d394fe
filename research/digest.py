"""Content digests: what identifies a checkpoint, a dump's source or an LLM directory beyond its path."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-1 of a file's content, or of a folder's files (names and contents), e.g. a transformers model dir."""
    path = Path(path)
    digest = hashlib.sha1()
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()
