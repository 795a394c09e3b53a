"""Open a Stage 1 dataset for a job and build TorchTitan's data loader over it.

Kept apart from ``dataset`` (the samples) so that the paired reader and the checkpointed loader can
build on the dataset without an import circle: dataset <- paired, elastic_loader <- loader.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torchtitan.config import JobConfig
from torchtitan.config.job_config import DataLoader as DataLoaderConfig
from torchtitan.tools.logging import logger

from shared import contract
from shared.contract import Identity
from stage2_train.data.dataset import PrecomputedDataset, collate
from stage2_train.data.elastic_loader import ElasticDataloader
from stage2_train.data.extent import check_dataset_extent
from stage2_train.data.identity_check import check_identity
from stage2_train.data.paired import PairedDataset
from stage2_train.data.sampler import EpochBatchSampler
from stage2_train.model.flavors import FLAVORS
from stage2_train.refusals import Refusal, dataset_size_refusal, refuse


def precomputed_dataset(root: str | Path, identity: Identity, on_corrupt: str) -> PrecomputedDataset:
    """The dataset at ``root``: its own stores, or (the resolution ladder) image stores paired with a text dataset."""
    if identity.stores_text:
        return PrecomputedDataset(root, identity, on_corrupt)
    return PairedDataset(root, identity, on_corrupt)


def open_dataset(job_config: JobConfig) -> tuple[Path, Identity]:
    """The dataset this job trains on, after checking that it fits the flavor and config."""
    if not job_config.training.dataset_path:
        raise Refusal("set --training.dataset_path to a Stage 1 dataset directory")
    root = Path(job_config.training.dataset_path)
    identity = contract.read_identity(root)
    check_identity(identity, FLAVORS[job_config.model.flavor], job_config, str(root))
    return root, identity


def build_precomputed_dataloader(
    dp_world_size: int, dp_rank: int, job_config: JobConfig, tokenizer: object = None
) -> ElasticDataloader:
    """TorchTitan's ``build_dataloader_fn``: this rank's infinite, shuffled, resumable batches."""
    del tokenizer  # prompts are already encoded
    root, identity = open_dataset(job_config)
    check_dataset_extent(job_config)
    dataset = precomputed_dataset(root, identity, job_config.stage2.on_corrupt)
    refuse(dataset_size_refusal(root, len(dataset), job_config.training.local_batch_size * dp_world_size))
    sampler = EpochBatchSampler(
        len(dataset), job_config.training.local_batch_size, dp_rank, dp_world_size, job_config.stage2.seed
    )
    logger.info(
        f"dataset {root}: {len(dataset):,} samples in {len(dataset.stores)} committed stores, "
        f"{sampler.batches_per_epoch:,} steps per epoch"
    )
    return ElasticDataloader(
        dataset,
        sampler,
        dp_rank,
        dp_world_size,
        job_config.stage2.dataset_refresh,
        collate_fn=collate,
        **loader_options(job_config.training.dataloader),
    )


def loader_options(config: DataLoaderConfig) -> dict[str, Any]:
    """TorchTitan's ``[….dataloader]`` settings as DataLoader arguments (pinning only with CUDA)."""
    options = asdict(config)
    options["pin_memory"] = options["pin_memory"] and torch.cuda.is_available()
    return options
