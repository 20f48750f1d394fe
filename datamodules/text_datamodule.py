"""Sentences of a text corpus (one per line) for causal LM pretraining, e.g. the spoken-sentences preparer's
`lm_corpus.txt`.

- A seeded fraction of the distinct sentences is held out for validation (every copy of them leaves training).
- Training is refused when the corpus holds a sentence of the evaluation manifests (`exclude_manifests`): an LM
  that has read the test transcripts would flatter every AcLLM built on it.
- The byte-level BPE tokenizer is trained here, in `setup`, on the training sentences only: it must never see
  the validation or test text, and the datamodule is the part that reads files (the module takes it from here).
- Batches are padded sentences `<s> ... </s>`, bucketed by token count (the audio datamodule's sampler, with
  token counts for durations), so padding stays small. One sentence per row rather than packed blocks: the LM is
  used on one transcript at a time, and validation perplexity is then per sentence, with no context carried
  over from an unrelated neighbour.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerFast

from datamodules.base import PreparedDataModule
from datamodules.collate import pad_stack
from datamodules.manifest import read_manifest
from datamodules.sampling import DurationBucketBatchSampler, ResumableDataLoader
from research.acllm.text_lm import train_tokenizer
from research.text import CharVocabulary

log = logging.getLogger(__name__)

IGNORE = -100  # label of padding positions
PREPARE_HINT = "python -m datamodules.prepare spoken-sentences --out {folder}"


def read_corpus(path: Path) -> list[str]:
    """The corpus's sentences, normalised as the AcLLM normalises transcripts; empty lines dropped."""
    if not path.is_file():
        hint = PREPARE_HINT.format(folder=path.parent)
        raise FileNotFoundError(
            f"text corpus not found: {path} (the spoken-sentences preparer writes it: {hint})"
        )
    normalize = CharVocabulary().normalize
    sentences = [normalize(line) for line in path.read_text(encoding="utf-8").splitlines()]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise ValueError(f"text corpus {path} holds no sentence")
    return sentences


def manifest_sentences(path: str | Path) -> list[str]:
    normalize = CharVocabulary().normalize
    return [normalize(row["text"]) for row in read_manifest(path, required=("text",)).rows]


def check_no_overlap(
    sentences: list[str], corpus: Path, exclude_manifests: list[str], shown: int = 5
) -> None:
    """ValueError naming the corpus and a few of its sentences that also appear in an excluded manifest."""
    in_corpus = set(sentences)
    found = {s: m for m in exclude_manifests for s in manifest_sentences(m) if s in in_corpus}
    if found:
        examples = "; ".join(f"{s!r} (in {m})" for s, m in list(found.items())[:shown])
        raise ValueError(
            f"text corpus {corpus} holds {len(found)} sentence(s) of the evaluation manifests, refusing to "
            f"train on them: {examples}{' ...' if len(found) > shown else ''}"
        )


def split_held_out(sentences: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, validation): a seeded `fraction` of the distinct sentences, every copy of them held out."""
    distinct = list(dict.fromkeys(sentences))
    count = max(1, round(len(distinct) * fraction))
    if count >= len(distinct):
        raise ValueError(f"{len(distinct)} distinct sentence(s) cannot spare {count} for validation")
    held_out = set(random.Random(seed).sample(distinct, count))
    return [s for s in sentences if s not in held_out], [s for s in distinct if s in held_out]


class TokenizedSentences(Dataset):
    """Sentences as `<s> ... </s>` token ids; those longer than `max_tokens` are left out (and logged)."""

    def __init__(
        self, sentences: list[str], tokenizer: PreTrainedTokenizerFast, *, max_tokens: int, name: str
    ):
        ids = tokenizer(sentences, add_special_tokens=False).input_ids
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        rows = [[bos, *row, eos] for row in ids]
        self.rows = [torch.tensor(row) for row in rows if len(row) <= max_tokens]
        if len(self.rows) < len(rows):
            log.info(
                "%s: left out %d sentence(s) over %d tokens", name, len(rows) - len(self.rows), max_tokens
            )
        if not self.rows:
            raise ValueError(f"{name}: no sentence fits in {max_tokens} tokens")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.rows[index]

    @property
    def lengths(self) -> list[int]:
        return [len(row) for row in self.rows]


def collate_sentences(rows: list[torch.Tensor], *, pad_id: int) -> dict[str, torch.Tensor]:
    """-> {"input_ids", "attention_mask", "labels" (IGNORE on padding)}, each (B, L), padded on the right."""
    input_ids, lens = pad_stack(rows, pad_value=pad_id)
    attention_mask = (torch.arange(input_ids.shape[1]) < lens[:, None]).long()
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class TextDataModule(PreparedDataModule):
    def __init__(
        self,
        *,
        corpus: str,
        exclude_manifests: list[str] | None = None,
        test_manifests: dict[str, str] | None = None,
        val_fraction: float = 0.02,
        split_seed: int = 1234,
        vocab_size: int = 2000,
        max_tokens: int = 128,
        batch_size: int = 32,
        max_batch_tokens: int | None = None,
        num_buckets: int = 10,
        num_workers: int = 0,
        seed: int = 0,
        preparers: dict[str, Callable[[], object]] | None = None,
    ):
        super().__init__()
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.corpus = Path(corpus)
        self.exclude_manifests = [str(m) for m in exclude_manifests or []]
        self.test_manifests = dict(test_manifests or {})
        self.val_fraction = val_fraction
        self.split_seed = (
            split_seed  # its own seed: changing the run's seed must not change the validation set
        )
        self.vocab_size = vocab_size
        self.max_tokens = max_tokens
        self.batching = {
            "batch_size": batch_size,
            "max_batch_seconds": max_batch_tokens,
            "num_buckets": num_buckets,
        }
        self.num_workers = num_workers
        self.seed = seed
        self.preparers = dict(preparers or {})
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.datasets: dict[str, TokenizedSentences] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.setup_corpus()
        if stage in (None, "test"):
            for name, path in self.test_manifests.items():
                if name not in self.datasets:
                    self.datasets[name] = self.tokenized(
                        manifest_sentences(path), f"{path} (test set {name})"
                    )

    def setup_corpus(self) -> None:
        """Check the corpus, split it, train the tokenizer on the training sentences and tokenise both splits."""
        sentences = read_corpus(self.corpus)
        check_no_overlap(sentences, self.corpus, self.exclude_manifests)
        train, val = split_held_out(sentences, self.val_fraction, self.split_seed)
        log.info("%s: %d training and %d validation sentences", self.corpus, len(train), len(val))
        self.tokenizer = train_tokenizer(train, vocab_size=self.vocab_size)
        self.datasets["train"] = self.tokenized(train, f"{self.corpus} (training)")
        self.datasets["val"] = self.tokenized(val, f"{self.corpus} (validation)")

    def tokenized(self, sentences: list[str], name: str) -> TokenizedSentences:
        return TokenizedSentences(sentences, self.tokenizer, max_tokens=self.max_tokens, name=name)

    def loader(self, name: str, *, shuffle: bool) -> ResumableDataLoader:
        if name not in self.datasets:
            raise RuntimeError(f"no '{name}' sentences: call setup() first (or configure test_manifests)")
        dataset = self.datasets[name]
        sampler = DurationBucketBatchSampler(
            dataset.lengths, shuffle=shuffle, seed=self.seed, **self.batching
        )
        return ResumableDataLoader(
            dataset,
            batch_sampler=sampler,
            advance_epochs=shuffle,  # training loaders only
            collate_fn=partial(collate_sentences, pad_id=self.tokenizer.pad_token_id),
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),  # never draws from the global RNG
        )

    def train_dataloader(self) -> ResumableDataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> ResumableDataLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> list[ResumableDataLoader]:
        return [self.loader(name, shuffle=False) for name in self.test_manifests]
