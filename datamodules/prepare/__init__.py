"""Preparers: turn a dataset on disk into manifests (`python -m datamodules.prepare --help`)."""

from datamodules.prepare.connected_digits import prepare_connected_digits
from datamodules.prepare.folder import prepare_folder
from datamodules.prepare.fsdd import prepare_fsdd
from datamodules.prepare.fsdd_captions import caption_prompts, prepare_fsdd_captions
from datamodules.prepare.librispeech import prepare_librispeech
from datamodules.prepare.spoken_sentences import prepare_spoken_sentences

__all__ = [
    "caption_prompts",
    "prepare_connected_digits",
    "prepare_folder",
    "prepare_fsdd",
    "prepare_fsdd_captions",
    "prepare_librispeech",
    "prepare_spoken_sentences",
]
