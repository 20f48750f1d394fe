"""Free Spoken Digit Dataset: manifests for FSDD's own split (index 0-4 test, 5-49 train).

The recordings come from a local mirror (VOXLAB_MIRROR/fsdd) or, with `download=True`, from the pinned upstream
commit; either way their content is checked against a pinned digest of all 3,000 files.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from datamodules.manifest import write_manifest
from datamodules.prepare.stamp import is_prepared, mark_prepared
from research.audio import audio_info
from research.text import DIGIT_WORDS

log = logging.getLogger(__name__)

UPSTREAM_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
UPSTREAM_ZIP = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{UPSTREAM_COMMIT}.zip"
# sha256 over the sorted (file name, sha256 of file) pairs of recordings/ at UPSTREAM_COMMIT.
RECORDINGS_DIGEST = "710e3ab45fe6e3b6efb45169826617fecd89ea09ab259f489e68e1325b34116d"
TEST_INDICES = range(0, 5)


@dataclass(frozen=True)
class FsddClip:
    path: Path
    digit: int
    speaker: str
    index: int

    @property
    def split(self) -> str:
        return "test" if self.index in TEST_INDICES else "train"

    @property
    def text(self) -> str:
        return DIGIT_WORDS[self.digit]

    @property
    def id(self) -> str:
        return f"fsdd_{self.path.stem}"


def recordings_digest(recordings: Path) -> str:
    outer = hashlib.sha256()
    for wav in sorted(recordings.glob("*.wav")):
        outer.update(wav.name.encode() + b"\0" + hashlib.sha256(wav.read_bytes()).hexdigest().encode())
    return outer.hexdigest()


def mirror_root(mirror: str | os.PathLike | None = None) -> Path | None:
    """The data mirror folder: the argument, else $VOXLAB_MIRROR, else None."""
    value = mirror or os.environ.get("VOXLAB_MIRROR")
    return Path(value).expanduser() if value else None


def download_fsdd(cache_dir: Path) -> Path:
    """Fetch the pinned upstream snapshot (needs internet) and return its recordings folder."""
    target = cache_dir / "fsdd" / "recordings"
    if not target.is_dir():
        log.info("downloading FSDD %s", UPSTREAM_ZIP)
        with urllib.request.urlopen(UPSTREAM_ZIP, timeout=120) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
        target.mkdir(parents=True)
        for name in archive.namelist():
            if "/recordings/" in name and name.endswith(".wav"):
                (target / Path(name).name).write_bytes(archive.read(name))
    return target


def locate_recordings(mirror: str | os.PathLike | None, download: bool, cache_dir: Path) -> Path:
    root = mirror_root(mirror)
    if root is not None and (root / "fsdd" / "recordings").is_dir():
        recordings = root / "fsdd" / "recordings"
    elif download:
        recordings = download_fsdd(cache_dir)
    else:
        raise FileNotFoundError(
            f"FSDD not found under mirror {root!s} (expected <mirror>/fsdd/recordings). Set VOXLAB_MIRROR to the "
            "folder holding fsdd/, or pass download=true on a machine with internet."
        )
    digest = recordings_digest(recordings)
    if digest != RECORDINGS_DIGEST:
        raise ValueError(
            f"FSDD recordings at {recordings} do not match the pinned snapshot (digest {digest})"
        )
    return recordings


def list_clips(recordings: Path) -> list[FsddClip]:
    clips = []
    for wav in sorted(recordings.glob("*.wav")):
        digit, speaker, index = wav.stem.split("_")
        clips.append(FsddClip(path=wav, digit=int(digit), speaker=speaker, index=int(index)))
    return clips


def clip_row(clip: FsddClip) -> dict:
    duration, sample_rate, _ = audio_info(clip.path)
    return {
        "id": clip.id,
        "audio_filepath": str(clip.path),
        "duration": round(duration, 4),
        "sample_rate": sample_rate,
        "text": clip.text,
        "speaker": clip.speaker,
        "lang": "en",
        "digit": clip.digit,
        "index": clip.index,
    }


def prepare_fsdd(
    *,
    out_dir: str | Path,
    mirror: str | None = None,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Write out_dir/{train,test}.jsonl for FSDD's own split; returns the manifest paths by split."""
    out_dir = Path(out_dir)
    outputs = {split: out_dir / f"{split}.jsonl" for split in ("train", "test")}
    recordings = locate_recordings(mirror, download, Path(cache_dir or out_dir / "download"))
    settings = {"recordings": str(recordings.resolve()), "digest": RECORDINGS_DIGEST}
    if is_prepared(out_dir, settings, list(outputs.values())):
        return outputs
    clips = list_clips(recordings)
    for split, path in outputs.items():
        write_manifest(path, [clip_row(c) for c in clips if c.split == split])
    mark_prepared(out_dir, settings)
    return outputs
