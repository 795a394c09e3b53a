"""``inspect_shards --grid``: decode samples' stored posterior means with the dataset's AE into one PNG."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from shared import contract
from shared.inspection.samples import Sample
from shared.latent_grid import decode, grid_image, load_dataset_ae


@dataclass
class GridResult:
    path: str
    size: tuple[int, int]
    ae_weights: str
    ae_checked: bool
    """Whether the weights' SHA-256 matched the identity's (False: the identity records none)."""
    device: str


def write_grid(
    dataset: str | os.PathLike,
    samples: list[Sample],
    out: str | os.PathLike,
    ae_dir: str | os.PathLike | None = None,
    device: str | None = None,
) -> GridResult:
    """Decode ``samples`` and write them, captioned, as one PNG at ``out``."""
    identity = contract.read_identity(dataset)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ae, weights, checked = load_dataset_ae(dataset, identity, ae_dir, device)
    means = np.stack([s.arrays[contract.AE_MEAN] for s in samples])
    image = grid_image(decode(ae, means, identity), [s.caption for s in samples])
    image.save(out, format="PNG")
    return GridResult(str(out), image.size, str(weights), checked, device)
