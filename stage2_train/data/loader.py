"""Open a Stage 1 dataset for a job and build TorchTitan's data loader over it.

Kept apart from ``dataset`` (the samples) so that the paired reader and the checkpointed loader can
build on the dataset without an import circle: dataset <- paired, elastic_loader <- loader.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from torchtitan.config import JobConfig
from torchtitan.config.job_config import DataLoader as DataLoaderConfig
from torchtitan.tools.logging import logger

from shared import contract
from shared.contract import Identity
from stage2_train.data.compact_text import TextTrim
from stage2_train.data.dataset import Batch, PrecomputedDataset, collate, load_empty_prompt
from stage2_train.data.elastic_loader import ElasticDataloader
from stage2_train.data.extent import check_dataset_extent
from stage2_train.data.identity_check import check_identity
from stage2_train.data.manifest import DatasetManifest, read_manifest, shared_manifest
from stage2_train.data.paired import PairedDataset
from stage2_train.data.sampler import EpochBatchSampler
from stage2_train.model.flavors import FLAVORS
from stage2_train.refusals import Refusal, dataset_size_refusal, refuse


def precomputed_dataset(
    root: str | Path, identity: Identity, on_corrupt: str, manifest: DatasetManifest | None = None
) -> PrecomputedDataset:
    """The dataset at ``root``: its own stores, or (the resolution ladder) image stores paired with a text dataset."""
    if identity.stores_text:
        return PrecomputedDataset(root, identity, on_corrupt, manifest)
    return PairedDataset(root, identity, on_corrupt, manifest)


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
    manifest = shared_manifest(lambda: training_manifest(job_config, root, identity))
    dataset = precomputed_dataset(root, identity, job_config.stage2.on_corrupt, manifest)
    refuse(dataset_size_refusal(root, len(dataset), job_config.training.local_batch_size * dp_world_size))
    sampler = EpochBatchSampler(
        len(dataset), job_config.training.local_batch_size, dp_rank, dp_world_size, job_config.stage2.seed
    )
    logger.info(
        f"dataset {root}: {len(dataset):,} samples in {len(dataset.stores)} committed stores, "
        f"{sampler.batches_per_epoch:,} steps per epoch; {text_mode_line(identity, job_config.stage2.text_bucket)}"
    )
    return ElasticDataloader(
        dataset,
        sampler,
        dp_rank,
        dp_world_size,
        job_config.stage2.dataset_refresh,
        collate_fn=batch_collate(root, identity, job_config.stage2.text_bucket),
        **loader_options(job_config.training.dataloader),
    )


def batch_collate(root: Path, identity: Identity, text_bucket: int) -> Callable[[list], Batch]:
    """``collate``; on compact text trimming each batch to ``text_bucket`` multiples that hold the empty
    prompt too (prompt dropout may substitute it in any row)."""
    if not identity.compact_text:
        return collate
    empty_length = int(load_empty_prompt(root, identity)[contract.T5_LENGTH])
    return functools.partial(collate, text_trim=TextTrim(text_bucket, empty_length))


def text_mode_line(identity: Identity, text_bucket: int) -> str:
    """Which text the run trains on, for its log."""
    if identity.compact_text:
        return (f"compact text: T5 cut per batch to multiples of {text_bucket} up to {identity.t5_max_length} "
                f"tokens, padded positions masked out of attention (MFU still counts {identity.t5_max_length})")
    return f"exact text: {identity.t5_max_length} padded T5 tokens, no attention mask (TorchTitan's online math)"


def training_manifest(job_config: JobConfig, root: Path, identity: Identity) -> DatasetManifest:
    """Rank 0's start-up reading of the training dataset: refused while unfinished (``extent``), else its stores."""
    check_dataset_extent(job_config)
    return read_manifest(root, identity)


def loader_options(config: DataLoaderConfig) -> dict[str, Any]:
    """TorchTitan's ``[….dataloader]`` settings as DataLoader arguments (pinning only with CUDA)."""
    options = asdict(config)
    options["pin_memory"] = options["pin_memory"] and torch.cuda.is_available()
    return options
