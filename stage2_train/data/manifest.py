"""The stores a run trains on, read once per job and handed to every rank.

At CC12M scale (2,176 stores) every rank reading every store's ``zarr.json`` at start-up sends
stores x ranks small reads (~280 k for 128 ranks) to a parallel filesystem's metadata servers, and
again on each requeue. Here global rank 0 alone reads them (the completeness check, a ladder
dataset's pairing, each store's sample count) and broadcasts the result over the job's process group;
the other ranks open a store only when a loader worker first reads one of its samples.

A broadcast, not a manifest file: every rank gets the same snapshot by construction (no rank can list
a store Stage 1 committed a moment after another rank listed the directory, which would give the
ranks different sample orders), nothing is written into a dataset that may be read-only, and no
cached file can go stale. The in-job preflight calls ``read_manifest`` too, once per job.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from shared import contract, pairing
from shared.contract import ContractError, Identity

READ_THREADS = 16
"""Concurrent ``zarr.json`` reads on rank 0: on a parallel filesystem each is a server round trip."""


@dataclass(frozen=True)
class DatasetManifest:
    stores: tuple[tuple[str, int], ...]
    """(store name, sample count) of every committed store whose metadata was read, sorted by name."""
    unreadable: tuple[str, ...] = ()
    """One line per committed store whose metadata could not be read (``stage2.on_corrupt`` decides)."""


def read_manifest(root: str | Path, identity: Identity) -> DatasetManifest:
    """Each committed store's sample count, after checking that an image dataset still pairs with its
    text dataset (``PairingError`` otherwise). Reads every store's metadata: one process per job."""
    if not identity.stores_text:
        pairing.check_stores(root, pairing.TextDataset.of(root))
    paths = contract.committed_store_paths(root)
    with ThreadPoolExecutor(READ_THREADS) as pool:
        counts = list(pool.map(_sample_count, paths))
    return DatasetManifest(
        stores=tuple((path.name, n) for path, n in zip(paths, counts) if isinstance(n, int)),
        unreadable=tuple(n for n in counts if isinstance(n, str)),
    )


def _sample_count(path: Path) -> int | str:
    try:
        return contract.read_store_attrs(path).num_samples
    except (OSError, ValueError, ContractError) as exc:
        return f"{path}: unreadable store metadata: {exc}"


def shared_manifest(read: Callable[[], DatasetManifest]) -> DatasetManifest:
    """``read()`` on global rank 0, broadcast to every rank (without a process group: ``read()`` here).
    A failure on rank 0 is raised on every rank with rank 0's message, so no rank waits for a manifest
    that never comes."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return read()
    payload: list[object] = [None]
    if dist.get_rank() == 0:
        try:
            payload = [read()]
        except Exception as exc:
            dist.broadcast_object_list([(isinstance(exc, ContractError), str(exc))], src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    if isinstance(payload[0], DatasetManifest):
        return payload[0]
    contract_error, message = payload[0]
    raise ContractError(message) if contract_error else RuntimeError(f"rank 0 could not read the dataset: {message}")
