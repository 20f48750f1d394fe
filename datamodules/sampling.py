"""Duration-bucketed batches that are deterministic per (seed, epoch), shard across DDP ranks, and resume
mid-epoch (the dataloader records how many batches it handed out)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler


def distributed_rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class DurationBucketBatchSampler(Sampler[list[int]]):
    """Sorts utterances into duration buckets and batches within a bucket, so padding stays small.

    A batch holds at most `batch_size` utterances and, if given, at most `max_batch_seconds` of padded audio.
    With shuffle, bucket contents and batch order change every epoch (seeded). Every rank gets the same number
    of batches: the list is padded by repeating batches from its start.
    """

    def __init__(
        self,
        durations: list[float],
        *,
        batch_size: int,
        max_batch_seconds: float | None = None,
        num_buckets: int = 10,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.durations = np.asarray(durations, dtype=float)
        self.batch_size = batch_size
        self.max_batch_seconds = max_batch_seconds
        self.num_buckets = max(1, min(num_buckets, len(durations)))
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.skip_batches = 0  # set when resuming mid-epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches_of(self, indices: np.ndarray) -> list[list[int]]:
        batches, current, longest = [], [], 0.0
        for index in indices:
            duration = self.durations[index]
            padded_if_added = max(longest, duration) * (len(current) + 1)
            over_budget = self.max_batch_seconds is not None and padded_if_added > self.max_batch_seconds
            if current and (len(current) == self.batch_size or over_budget):
                batches.append(current)
                current, longest = [], 0.0
            current.append(int(index))
            longest = max(longest, duration)
        if current and not (self.drop_last and len(current) < self.batch_size):
            batches.append(current)
        return batches

    def all_batches(self) -> list[list[int]]:
        """Every batch of this epoch for all ranks, before sharding."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = np.argsort(self.durations, kind="stable")
        buckets = np.array_split(order, self.num_buckets)
        batches = []
        for bucket in buckets:
            if self.shuffle:
                bucket = rng.permutation(bucket)
                bucket = bucket[np.argsort(self.durations[bucket], kind="stable")]
            batches.extend(self._batches_of(bucket))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def rank_batches(self) -> list[list[int]]:
        rank, world = distributed_rank_and_size()
        batches = self.all_batches()
        per_rank = math.ceil(len(batches) / world)
        padded = batches + batches[: per_rank * world - len(batches)]
        return padded[rank::world]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches()[self.skip_batches :]
        self.skip_batches = 0
        yield from batches

    def __len__(self) -> int:
        return len(self.rank_batches())


class ResumableDataLoader(DataLoader):
    """DataLoader whose state (epoch, batches handed out) goes into Lightning checkpoints.

    Lightning collects `state_dict()` from loaders that have one and calls `load_state_dict()` on resume;
    the bucket sampler then skips the batches the interrupted run already trained on. A training loader
    (`advance_epochs`) moves to the next epoch after each full pass: Lightning's own `set_epoch` call reaches only
    a loader's `sampler`, never a batch sampler, so without this every epoch would repeat the first one's order,
    crops and contexts. Evaluation loaders stay at epoch 0 (the same crops and contexts at every validation).
    """

    def __init__(self, *args, advance_epochs: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self.advance_epochs = advance_epochs

    def __iter__(self):
        sampler = self.batch_sampler
        # a new pass after one that started (complete, or cut by limit_train_batches) is a new epoch; after
        # load_state_dict the count is 0, so a resumed epoch goes on (Lightning stops at the length, so no code
        # after the last yield would run)
        if self.advance_epochs and self._yielded:
            sampler.set_epoch(sampler.epoch + 1)
        self._yielded = sampler.skip_batches  # a resumed epoch counts the batches trained before the stop
        if hasattr(self.dataset, "set_epoch"):  # crop offsets follow the epoch; workers get a fresh copy
            self.dataset.set_epoch(sampler.epoch)
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict:
        # Lightning fetches no batch ahead for loaders with a length, so every batch handed out has been trained on.
        return {"epoch": self.batch_sampler.epoch, "batches_done": self._yielded}

    def load_state_dict(self, state: dict) -> None:
        sampler = self.batch_sampler
        finished = state["batches_done"] >= len(sampler)  # saved after the epoch's last batch
        sampler.set_epoch(state["epoch"] + (finished and self.advance_epochs))
        sampler.skip_batches = 0 if finished else state["batches_done"]
        self._yielded = 0
