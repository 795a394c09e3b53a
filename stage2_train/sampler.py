"""Which samples each data-parallel rank trains on, step by step, across as many epochs as it takes.

Epoch ``e`` is a permutation of all samples drawn from (seed, e). Its first
``batches_per_epoch · world · batch`` entries are cut into global batches, and rank ``r`` takes the
``r``-th slice of each: ranks are disjoint, every rank has the same number of batches (the uneven
tail of the permutation is dropped — a different tail each epoch), and the stream never ends, so no
rank waits for another at an epoch boundary. The position (epoch, batch) is the whole state: a
resumed run continues at exactly the next batch.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Infinite batches of sample indices for one data-parallel rank; checkpointable."""

    def __init__(self, num_samples: int, batch_size: int, dp_rank: int, dp_world_size: int, seed: int) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.dp_rank = dp_rank
        self.dp_world_size = dp_world_size
        self.seed = seed
        self.batches_per_epoch = num_samples // (batch_size * dp_world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{num_samples} samples cannot fill one global batch of {dp_world_size} ranks x {batch_size}"
            )
        self.epoch = 0
        self.batch_in_epoch = 0

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """This rank's batches of ``epoch``: [batches_per_epoch, batch_size] sample indices."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        used = order[: self.batches_per_epoch * self.dp_world_size * self.batch_size]
        return used.reshape(self.batches_per_epoch, self.dp_world_size, self.batch_size)[:, self.dp_rank]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            batches = self.epoch_batches(self.epoch)
            while self.batch_in_epoch < self.batches_per_epoch:
                batch = batches[self.batch_in_epoch].tolist()
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def _layout(self) -> dict[str, int]:
        return {
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "dp_rank": self.dp_rank,
            "dp_world_size": self.dp_world_size,
            "seed": self.seed,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "layout": self._layout()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position; refuse if the order it belongs to was made for other data or settings."""
        if state["layout"] != self._layout():
            raise ValueError(
                f"the checkpointed sample order was made for {state['layout']}, this run has {self._layout()}; "
                "resume with the same dataset, batch size and seed, or start a fresh order with "
                "--checkpoint.exclude_from_loading dataloader"
            )
        self.epoch = state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
