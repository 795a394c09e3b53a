"""Stage 2 on an image dataset of the resolution ladder: latents from its stores, text from its text dataset.

A sample is still one global index of the image dataset (so the sampler's disjoint per-rank slices,
shuffling and checkpointed position are unchanged); reading it takes the AE moments and ``text_index``
from the image store, then that row's ``t5``/``clip`` from the text store of the same name. The text
dataset is found and checked at start-up (``shared.pairing``; every store's pairing once per job, by
rank 0's ``data.manifest.read_manifest``): gone, another one, or a store rewritten under it stops the job
with one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared import contract
from shared.contract import Identity
from shared.pairing import TextDataset
from shared.store import StoreReader
from stage2_train.data.dataset import PrecomputedDataset
from stage2_train.data.manifest import DatasetManifest


class PairedDataset(PrecomputedDataset):
    """``PrecomputedDataset`` over image stores whose text lives in ``text`` (found from ``root``)."""

    reads = (contract.TEXT_INDEX, *contract.IMAGE_TENSORS)

    def __init__(
        self, root: str | Path, identity: Identity, on_corrupt: str, manifest: DatasetManifest | None = None
    ) -> None:
        super().__init__(root, identity, on_corrupt, manifest)  # the manifest's reading checked every store's pairing
        self.text = TextDataset.of(root)
        self._text_specs = contract.text_specs(self.text.identity)
        self._text_readers: dict[int, StoreReader] = {}

    def read(self, store: int, local: int) -> dict[str, np.ndarray]:
        arrays = self._reader(store).read(local, self.reads)
        row = int(arrays.pop(contract.TEXT_INDEX))
        return arrays | self._text_reader(store).read(row, tuple(self._text_specs))  # compact text: t5_length too

    def _text_reader(self, store: int) -> StoreReader:
        if store not in self._text_readers:
            path = self.text.store_path(self.stores[store].name)
            self._text_readers[store] = StoreReader(path, self.text.identity, self._text_specs)
        return self._text_readers[store]
