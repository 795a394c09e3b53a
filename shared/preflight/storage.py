"""Room and permission to write where the job writes: ENOSPC or EACCES hours in wastes the hours."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared import contract
from shared.contract import ContractError
from shared.inspect.report import size
from shared.preflight.table import FAIL, OK, WARN, Row

if TYPE_CHECKING:
    from stage1_encode.sources import TarSource

COMPRESSION = 1.4
"""Lossless ratio of blosc-zstd on real T5 activations (notes/zarr-layout.md: 1.43); the stored size of
a sample is estimated as its raw tensor bytes over this."""
INPUT_BYTES_PER_SAMPLE = 91_000
"""CC12M: ~1 TB of tars for 10,968,539 samples; a tar's sample count is estimated from its size."""
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


def raw_bytes_per_sample(image_size: int, t5_max_length: int, storage_dtype: str, assets: Path) -> float:
    """Raw tensor bytes of one stored sample, from the config and the assets' own shapes (T5 width from
    its config.json, CLIP's, the AE's latent channels and downsampling from its weights' header)."""
    from shared import encoders

    t5_dim = _config_value(assets / encoders.T5_DIR, "d_model")
    clip_dim = _config_value(assets / encoders.CLIP_DIR, "hidden_size")
    ae = encoders.autoencoder_params(assets)
    latent = image_size // 2 ** (len(ae.ch_mult) - 1)
    itemsize = 2 if storage_dtype == "bfloat16" else 4
    return itemsize * (t5_max_length * t5_dim + clip_dim + 2 * ae.z_channels * latent * latent)


def dataset_space_row(dataset: Path, tars: list[TarSource], free: int, raw_per_sample: float | None) -> Row:
    """Room for the stores Stage 1 has yet to write: measured on the dataset's committed stores when
    there are any, else the config's tensor sizes (compressed 1.4x) times the samples the tars hold."""
    stores = contract.committed_store_paths(dataset)
    done = {p.name for p in stores}
    todo = [t for t in tars if contract.store_name(t.name) not in done]
    measured = [b for b in map(_stored_bytes, stores) if b]
    if measured:
        per_tar = sum(measured) / len(measured)
        needed, basis = per_tar * len(todo), f"{len(todo):,} tar(s) x {size(per_tar)} (mean of {len(measured):,} committed stores)"
    elif raw_per_sample is None:
        return Row("output space", WARN, f"{size(free)} free; no estimate (assets unreadable)")
    else:
        samples = sum(math.ceil(t.size / INPUT_BYTES_PER_SAMPLE) for t in todo)
        per_sample = raw_per_sample / COMPRESSION
        needed, basis = samples * per_sample, f"~{samples:,} samples in {len(todo):,} tar(s) x {size(per_sample)}"
    return space_row("output space", needed, free, basis)


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


def _config_value(folder: Path, key: str) -> Any:
    return json.loads((folder / "config.json").read_text())[key]


def _stored_bytes(store: Path) -> int:
    try:
        return contract.read_store_attrs(store).stored_bytes
    except (OSError, ValueError, ContractError):
        return 0  # unreadable attributes: inspect_shards reports those; here the store just does not count
