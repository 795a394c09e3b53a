"""TorchTitan's data loader with a checkpoint state any world size can resume from.

TorchTitan's ``ParallelAwareDataloader`` checkpoints one state per data-parallel rank and refuses
another world size (pytorch/torchtitan#816). Here the state is global and every rank holds the same
copy (DCP writes it once): the trained sample position (epoch, samples consumed), the seed, the
dataset identity, the layout it was trained with, and the stores the run trains on with their sample
counts. A resume on another world or batch size continues at the same global position (and says the
layout changed); a resume trains on the pinned stores even if Stage 1 has committed more since, unless
``stage2.dataset_refresh`` asks for the current stores (then the next epoch starts over all of them).

The position counts batches handed to the trainer, not the sampler's: DataLoader workers run ahead.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from torchtitan.components.dataloader import ParallelAwareDataloader
from torchtitan.tools.logging import logger

from stage2_train.data.dataset import Batch, PrecomputedDataset
from stage2_train.data.sampler import EpochBatchSampler, SamplePosition
from stage2_train.infra.stop_request import ignore_sigterm
from stage2_train.refusals import Refusal

STATE_KEY = "sample_order"


class ElasticDataloader(ParallelAwareDataloader):
    def __init__(
        self,
        dataset: PrecomputedDataset,
        sampler: EpochBatchSampler,
        dp_rank: int,
        dp_world_size: int,
        dataset_refresh: bool,
        **options: Any,
    ) -> None:
        super().__init__(
            dataset, dp_rank=dp_rank, dp_world_size=dp_world_size, batch_sampler=sampler,
            worker_init_fn=ignore_sigterm, **options,
        )
        self.dataset_refresh = dataset_refresh
        self.trained = SamplePosition()

    def __iter__(self) -> Iterator[Batch]:
        self.batch_sampler.position = self.trained
        for batch in super().__iter__():
            self.trained = self.trained.after_batch(self.batch_sampler.num_samples, self.batch_sampler.global_batch)
            yield batch

    def _layout(self) -> dict[str, int]:
        return {
            "dp_world_size": self.batch_sampler.dp_world_size,
            "local_batch_size": self.batch_sampler.batch_size,
            "global_batch_size": self.batch_sampler.global_batch,
        }

    def state_dict(self) -> dict[str, Any]:
        state = {
            "epoch": self.trained.epoch,
            "consumed": self.trained.consumed,
            "seed": self.batch_sampler.seed,
            "identity": self.dataset.identity.digest(),
            "stores": self.dataset.store_counts(),
            "layout": self._layout(),
        }
        return {STATE_KEY: json.dumps(state, sort_keys=True)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue at the checkpoint's global position on the stores it pinned; refuse another seed or dataset."""
        state = json.loads(state_dict[STATE_KEY])
        digest = self.dataset.identity.digest()
        if state["seed"] != self.batch_sampler.seed or state["identity"] != digest:
            raise Refusal(
                f"the checkpointed sample order is for stage2.seed {state['seed']} on a dataset with identity "
                f"{state['identity']}; this run has seed {self.batch_sampler.seed} and identity {digest}. Resume with "
                "the same seed and dataset, or start a fresh order with --checkpoint.exclude_from_loading dataloader"
            )
        pinned = [(name, count) for name, count in state["stores"]]
        position = SamplePosition(state["epoch"], state["consumed"])
        if not self.dataset_refresh:
            self.dataset.keep_only(pinned)
        elif self.dataset.store_counts() != pinned:
            logger.info(
                f"dataset refreshed (stage2.dataset_refresh): {len(pinned)} pinned stores -> "
                f"{len(self.dataset.stores)} now; the rest of epoch {position.epoch} is skipped and epoch "
                f"{position.epoch + 1} starts over all {len(self.dataset):,} samples"
            )
            position = SamplePosition(position.epoch + 1, 0)
        self.batch_sampler.resize(len(self.dataset))
        self.trained = position
        if state["layout"] != self._layout():
            logger.info(f"sample order: layout changed from {_describe(state['layout'])} to {_describe(self._layout())}")
        start = position.next_batch_start(len(self.dataset), self.batch_sampler.global_batch)
        logger.info(
            f"sample order: resuming at epoch {start.epoch}, sample {start.consumed:,} of "
            f"{len(self.dataset):,} in {len(self.dataset.stores)} pinned stores"
        )


def _describe(layout: dict[str, int]) -> str:
    return (
        f"{layout['dp_world_size']} data-parallel rank(s) x {layout['local_batch_size']} "
        f"(global batch {layout['global_batch_size']})"
    )
