"""Read a Stage 1 dataset for training: random access over every committed store, checkpointable order.

One sample goes: ``EpochBatchSampler`` picks its global index → ``PrecomputedDataset`` finds its store
and reads it through ``StoreReader`` (which checks each chunk's CRC) in a DataLoader worker →
``collate`` stacks a batch as ``({"t5", "clip", "ae_mean", "ae_logvar"}, sample indices)`` (compact text:
``t5`` trimmed and ``t5_mask`` added, ``compact_text.py``) →
``ElasticDataloader`` (TorchTitan's loader) prefetches it (pinned on GPU) and checkpoints the global
sample position and the pinned stores under ``"dataloader"``. The indices travel as TorchTitan's "labels", so its token counters
count samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchtitan.tools.logging import logger

from shared import contract, pairing, torch_storage
from shared.contract import ContractError, Identity
from shared.store import StoreReader
from stage2_train.data.compact_text import TextTrim
from stage2_train.data.manifest import DatasetManifest, read_manifest

TENSORS = contract.TENSORS
"""What a training step needs of a sample; keys, captions and crop boxes stay on disk."""

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


def as_torch(name: str, values: np.ndarray, storage_dtype: str) -> torch.Tensor:
    """A stored array as a tensor: encodings in their logical dtype, ``t5_length`` as int64."""
    if name == contract.T5_LENGTH:
        return torch.from_numpy(np.asarray(values, dtype=np.int64))
    return torch_storage.from_storage(values, storage_dtype)


class PrecomputedDataset(Dataset):
    """Map-style view of all committed stores: global index -> that sample's tensors (or ``None`` when
    it is unreadable and ``on_corrupt`` is "skip"). Stores are opened lazily, once per process."""

    reads = TENSORS
    """The arrays read of a sample from this dataset's own store."""

    def __init__(
        self, root: str | Path, identity: Identity, on_corrupt: str, manifest: DatasetManifest | None = None
    ) -> None:
        """``manifest``: the stores as rank 0 read them (``manifest.shared_manifest``); ``None`` reads them here."""
        self.root = Path(root)
        self.identity = identity
        self.on_corrupt = on_corrupt
        self.skipped = 0
        """Unreadable samples (and stores) this process left out, under ``on_corrupt = "skip"``."""
        own = (*self.reads, contract.T5_LENGTH) if identity.compact_text and identity.stores_text else self.reads
        self.specs = {name: contract.array_specs(identity)[name] for name in own}
        """What is read of a sample from its own store (compact text adds ``t5_length``)."""
        if manifest is None:
            manifest = read_manifest(root, identity)
        for problem in manifest.unreadable:
            self._corrupt(ContractError(problem))
        if not manifest.stores:
            raise ContractError(f"{root}: no readable committed stores under {contract.SHARDS_DIR}/")
        self._use(list(manifest.stores))

    def _use(self, stores: list[tuple[str, int]]) -> None:
        """Train on ``stores`` (name, sample count); each is opened when a sample of it is first read."""
        self.stores = [contract.shards_dir(self.root) / name for name, _ in stores]
        self.offsets = np.cumsum([0, *(count for _, count in stores)])
        self._readers: dict[int, StoreReader] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def store_counts(self) -> list[tuple[str, int]]:
        """(store name, sample count) of every store trained on, in global index order."""
        return [(path.name, int(n)) for path, n in zip(self.stores, np.diff(self.offsets))]

    def keep_only(self, pinned: list[tuple[str, int]]) -> None:
        """Train on exactly ``pinned`` (a resumed run's stores), ignoring stores committed since; a
        pinned store that is gone or changed its count would silently renumber samples, so it stops."""
        have = dict(self.store_counts())
        changed = [f"{name} ({count} samples pinned, {have.get(name, 'no store')} now)"
                   for name, count in pinned if have.get(name) != count]
        if changed:
            raise ContractError(
                f"{self.root}: the checkpoint pins stores that are missing or changed: {', '.join(changed)}; "
                "restore them, or start a fresh sample order with --stage2.dataset_refresh"
            )
        self._use(pinned)

    def locate(self, index: int) -> tuple[int, int]:
        """Global sample index -> (store number, index within that store)."""
        store = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return store, index - int(self.offsets[store])

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        store, local = self.locate(index)
        try:
            arrays = self.read(store, local)
        except ContractError as exc:
            self._corrupt(exc)
            return None
        except OSError as exc:  # the store vanished or its metadata broke after start-up
            self._corrupt(ContractError(f"{self.stores[store]}: {exc}"))
            return None
        sample: dict[str, Any] = {n: as_torch(n, a, self.identity.storage_dtype) for n, a in arrays.items()}
        sample["index"] = index
        return sample

    def read(self, store: int, local: int) -> dict[str, np.ndarray]:
        """The stored ``TENSORS`` of one sample (compact text: and its ``t5_length``)."""
        return self._reader(store).read(local, tuple(self.specs))

    def _reader(self, store: int) -> StoreReader:
        if store not in self._readers:
            reader = StoreReader(self.stores[store], self.identity, self.specs)
            expected = int(self.offsets[store + 1] - self.offsets[store])
            if len(reader) != expected:  # rewritten since start-up: its samples would be renumbered
                raise ContractError(f"{self.stores[store]}: {len(reader)} samples now, {expected} when the run started")
            self._readers[store] = reader
        return self._readers[store]

    def _corrupt(self, exc: ContractError) -> None:
        if self.on_corrupt == "fail":
            raise exc
        self.skipped += 1
        logger.warning(f"skipping unreadable data (stage2.on_corrupt = skip; {self.skipped} skipped so far): {exc}")


def collate(samples: list[dict[str, Any] | None], text_trim: TextTrim = TextTrim()) -> Batch:
    """Stack the readable samples of a batch; labels are their global indices. Compact text (samples
    carrying ``t5_length``): ``t5`` trimmed and ``t5_mask`` added by ``text_trim``."""
    readable = [s for s in samples if s is not None]
    if not readable:
        raise ContractError(f"all {len(samples)} samples of a batch were unreadable; the dataset is badly damaged")
    inputs = {name: torch.stack([s[name] for s in readable]) for name in TENSORS}
    if contract.T5_LENGTH in readable[0]:
        inputs |= text_trim(inputs[contract.T5], torch.stack([s[contract.T5_LENGTH] for s in readable]))
    return inputs, torch.tensor([s["index"] for s in readable], dtype=torch.int64)


def load_empty_prompt(root: str | Path, identity: Identity) -> dict[str, torch.Tensor]:
    """The empty caption's ``t5`` [L, D] and ``clip`` [D] encodings (compact text: and its ``t5_length``),
    made by the dataset's encoders (an image dataset's are its text dataset's)."""
    if not identity.stores_text:
        root = pairing.locate_text_dataset(root)
        identity = contract.read_identity(root)
    specs = contract.empty_prompt_specs(identity)
    arrays = StoreReader(Path(root) / contract.EMPTY_PROMPT_STORE, identity, specs).read(0)
    return {name: as_torch(name, a, identity.storage_dtype) for name, a in arrays.items()}
