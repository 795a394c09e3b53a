"""Which samples each data-parallel rank trains on, step by step, across as many epochs as it takes.

Epoch ``e`` is a permutation of all samples drawn from (seed, e). Each step takes the next
``world · batch`` entries of it as one global batch, and rank ``r`` takes the ``r``-th slice: ranks are
disjoint, every rank has the same number of batches (the tail of the permutation that cannot fill a
global batch is dropped — a different tail each epoch), and the stream never ends, so no rank waits
for another at an epoch boundary.

The position is global — (epoch, samples of its permutation consumed) — and says nothing of the world
or batch size, so a run checkpointed on N ranks resumes on any other count, or with another batch
size, at the same place in the same permutation: within an epoch no sample repeats and none is
skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


@dataclass(frozen=True)
class SamplePosition:
    epoch: int = 0
    consumed: int = 0
    """Samples of epoch ``epoch``'s permutation that earlier global batches took."""

    def next_batch_start(self, num_samples: int, global_batch: int) -> "SamplePosition":
        """Where the next global batch starts: here, or at the next epoch when the rest cannot fill it."""
        if self.consumed + global_batch > num_samples:
            return SamplePosition(self.epoch + 1, 0)
        return self

    def after_batch(self, num_samples: int, global_batch: int) -> "SamplePosition":
        start = self.next_batch_start(num_samples, global_batch)
        return SamplePosition(start.epoch, start.consumed + global_batch)


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of all sample indices that epoch ``epoch`` walks through."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


class EpochBatchSampler(Sampler[list[int]]):
    """Infinite batches of sample indices for one data-parallel rank, from ``position`` on.

    The DataLoader runs ahead of training (worker prefetch), so this sampler's own progress is not what
    was trained; ``ElasticDataloader`` keeps the trained position and sets ``position`` on resume.
    """

    def __init__(self, num_samples: int, batch_size: int, dp_rank: int, dp_world_size: int, seed: int) -> None:
        self.batch_size = batch_size
        self.dp_rank = dp_rank
        self.dp_world_size = dp_world_size
        self.seed = seed
        self.position = SamplePosition()
        self.resize(num_samples)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.dp_world_size

    def resize(self, num_samples: int) -> None:
        """Train on ``num_samples`` samples (a pinned store list may hold fewer than are committed)."""
        if num_samples < self.global_batch:
            raise ValueError(
                f"{num_samples} samples cannot fill one global batch of {self.dp_world_size} ranks x {self.batch_size}"
            )
        self.num_samples = num_samples
        self.batches_per_epoch = num_samples // self.global_batch

    def __iter__(self) -> Iterator[list[int]]:
        position = self.position
        order_epoch, order = -1, np.empty(0, dtype=np.int64)
        while True:
            position = position.next_batch_start(self.num_samples, self.global_batch)
            if position.epoch != order_epoch:
                order_epoch, order = position.epoch, epoch_order(self.num_samples, self.seed, position.epoch)
            start = position.consumed + self.dp_rank * self.batch_size
            yield order[start : start + self.batch_size].tolist()
            position = position.after_batch(self.num_samples, self.global_batch)
