"""Pick samples (spread over the dataset, or by key) and describe them: caption, geometry, tensors."""

from __future__ import annotations

import bisect
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from shared import contract, torch_storage
from shared.contract import Identity
from shared.progress import ATTR_READ_THREADS, read_committed
from shared.store import StoreReader

Location = tuple[Path, int]
"""A sample: its store's path and its index in that store."""


@dataclass
class TensorStats:
    shape: list[int]
    dtype: str
    mean: float
    std: float
    min: float
    max: float


@dataclass
class Sample:
    """One sample as a person wants to see it; ``arrays`` keeps the stored values for the grid."""

    store: str
    index: int
    key: str
    caption: str
    original_size: list[int]
    crop_box: list[int]
    tensors: dict[str, TensorStats]
    arrays: dict[str, np.ndarray]

    def to_dict(self) -> dict[str, Any]:
        """JSON view: everything but the raw arrays."""
        return {k: v for k, v in vars(self).items() if k != "arrays"} | {
            "tensors": {name: vars(s) for name, s in self.tensors.items()}
        }


def spread(dataset: str | os.PathLike, n: int) -> list[Location]:
    """``n`` samples evenly spaced over all committed stores, so a glance covers the whole dataset."""
    attrs, _ = read_committed(dataset, contract.read_identity(dataset).digest())
    names = sorted(attrs)
    ends = np.cumsum([attrs[name].num_samples for name in names]).tolist()
    total = ends[-1] if ends else 0
    root = contract.shards_dir(dataset)
    locations, n = [], min(n, total)
    for position in sorted({i * total // n for i in range(n)}):
        store = bisect.bisect_right(ends, position)
        start = ends[store - 1] if store else 0
        locations.append((root / names[store], position - start))
    return locations


def find_key(dataset: str | os.PathLike, key: str) -> list[Location]:
    """Every sample whose key is ``key`` (keys are unique per store; a repeat across stores shows here)."""
    attrs, _ = read_committed(dataset, contract.read_identity(dataset).digest())
    paths = [contract.shards_dir(dataset) / name for name in sorted(attrs)]
    with ThreadPoolExecutor(ATTR_READ_THREADS) as pool:
        hits = pool.map(lambda path: [(path, i) for i in _key_indices(path, key)], paths)
        return [hit for store_hits in hits for hit in store_hits]


def read_samples(dataset: str | os.PathLike, locations: list[Location]) -> list[Sample]:
    """Read and describe samples through ``StoreReader`` (shard files and chunk CRCs checked)."""
    identity = contract.read_identity(dataset)
    specs = contract.array_specs(identity)
    readers: dict[Path, StoreReader] = {}
    samples = []
    for path, index in locations:
        if path not in readers:
            readers[path] = StoreReader(path, identity, specs)
        reader = readers[path]
        samples.append(describe(path.name, index, reader.read(index), identity))
    return samples


def describe(store: str, index: int, arrays: dict[str, np.ndarray], identity: Identity) -> Sample:
    specs = contract.array_specs(identity)
    return Sample(
        store=store,
        index=index,
        key=str(arrays[contract.KEY]),
        caption=str(arrays[contract.CAPTION]),
        original_size=np.asarray(arrays[contract.ORIGINAL_SIZE]).tolist(),
        crop_box=np.asarray(arrays[contract.CROP_BOX]).tolist(),
        tensors={
            name: tensor_stats(arrays[name], spec, identity.storage_dtype)
            for name, spec in specs.items()
            if spec.is_tensor
        },
        arrays=arrays,
    )


def tensor_stats(values: np.ndarray, spec: contract.ArraySpec, storage_dtype: str) -> TensorStats:
    t = torch_storage.from_storage(values, storage_dtype).float()
    return TensorStats(
        shape=list(t.shape),
        dtype=spec.logical_dtype,
        mean=t.mean().item(),
        std=t.std(correction=0).item(),
        min=t.min().item(),
        max=t.max().item(),
    )


def _key_indices(path: Path, key: str) -> list[int]:
    keys = zarr.open_group(path, mode="r")[contract.KEY][:]
    return np.flatnonzero(keys == key).tolist()
