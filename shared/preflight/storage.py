"""Room and permission to write where the job writes: ENOSPC or EACCES hours in wastes the hours."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from shared import contract
from shared.contract import ContractError
from shared.inspect.report import size
from shared.preflight.table import FAIL, OK, WARN, Row

BYTES_PER_SAMPLE = 1.6e6
"""Stored bytes per sample, production config (bf16, T5 256 x 4096): T5's 2 MiB compresses 1.43x with
blosc-zstd (notes/zarr-layout.md) to ~1.47 MB; CLIP, AE moments and strings add ~0.07 MB; rounded up."""
SAMPLES_PER_TAR = 5_040
"""CC12M: 10,968,539 samples in 2,176 tars."""
CHECKPOINT_BYTES_PER_PARAM = 12
"""A TorchTitan checkpoint holds fp32 weights and AdamW's two fp32 moments."""
SPARE = 1.2
"""Below this many times the estimate, space is tight (WARN): estimates are averages."""


def writable_row(label: str, path: Path) -> Row:
    """Create and delete a file where the job will write (or in the nearest existing parent)."""
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return Row(label, FAIL, f"{probe} is not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=".preflight-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        return Row(label, FAIL, f"cannot create files in {probe}: {e.strerror or e}")
    return Row(label, OK, f"writable: {path}" if probe == path.absolute() else f"{path} will be created in {probe}")


def dataset_space_row(dataset: Path, tar_names: list[str], free: int) -> Row:
    """Room for the stores Stage 1 has yet to write: measured on the dataset's committed stores when
    there are any, else the production constants."""
    stores = contract.committed_store_paths(dataset)
    done = {p.name for p in stores}
    remaining = sum(contract.store_name(name) not in done for name in tar_names)
    measured = [b for b in map(_stored_bytes, stores) if b]
    if measured:
        per_tar, basis = sum(measured) / len(measured), f"mean of {len(measured):,} committed stores"
    else:
        per_tar = SAMPLES_PER_TAR * BYTES_PER_SAMPLE
        basis = f"{SAMPLES_PER_TAR:,} samples x {BYTES_PER_SAMPLE / 1e6:.1f} MB, CC12M at the production config"
    return space_row("output space", remaining * per_tar, free, f"{remaining:,} tar(s) to encode x {size(per_tar)} ({basis})")


def checkpoint_copies(keep_latest_k: int, steps: int, interval: int) -> int:
    """Checkpoints on disk at once: TorchTitan writes the next before it purges the oldest; 0 keeps all."""
    return keep_latest_k + 1 if keep_latest_k > 0 else math.ceil(steps / interval)


def checkpoint_space_row(copies: int, nparams: int, free: int) -> Row:
    needed = copies * nparams * CHECKPOINT_BYTES_PER_PARAM
    return space_row(
        "checkpoint space", needed, free, f"{copies} checkpoint(s) x {size(nparams * CHECKPOINT_BYTES_PER_PARAM)}"
    )


def space_row(label: str, needed: float, free: int, basis: str) -> Row:
    text = f"{size(free)} free, {size(needed)} needed: {basis}"
    if free < needed:
        return Row(label, FAIL, text)
    return Row(label, WARN if free < needed * SPARE else OK, text)


def _stored_bytes(store: Path) -> int:
    try:
        return contract.read_store_attrs(store).stored_bytes
    except (OSError, ValueError, ContractError):
        return 0  # unreadable attributes: inspect_shards reports those; here the store just does not count
