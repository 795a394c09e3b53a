"""Check in seconds what would fail a Stage 1 array task hours in; print one table, exit 1 on any FAIL.

    python -m stage1_encode.preflight --input TARS --output DATASET --assets DIR [--config FILE]
        [--hash] [--section.key value …]            the arguments of python -m stage1_encode

Stage 1's own checks (its input listing, the assets and their hashes, room for the stores it has yet
to write) beside the rows every stage shares (``preflight``). Nothing hashes the 10 GB of
weights unless ``--hash`` asks: digests come from the cache that ``asset_hashes`` keeps.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from preflight import storage, system
from preflight.storage import free_bytes
from preflight.table import FAIL, OK, WARN, Row, command_line, print_table
from shared import contract
from shared.ae import autoencoder_params
from shared.contract import ContractError
from shared.units import size
from stage1_encode import asset_loading
from stage1_encode.asset_loading import AssetsError, asset_hashes, cached_asset_hashes
from stage1_encode.config import ConfigError, EncodeConfig, load_config, parse_overrides
from stage1_encode.errors import Stage1Error
from stage1_encode.identity import text_mode
from stage1_encode.sources import SourcesError, TarSource, list_tars
from stage1_encode.text_from import open_text_dataset

Hashes = dict[str, dict[str, str]]

COMPRESSION = 1.4
"""Lossless ratio of blosc-zstd on real T5 activations, an estimate: the stored size of a sample is its
raw tensor bytes over this until a dataset has committed stores to measure."""
INPUT_BYTES_PER_SAMPLE = 91_000
"""CC12M: ~1 TB of tars for 10,968,539 samples; a tar's sample count is estimated from its size."""


HELP = """Checks in seconds what would fail a Stage 1 array task hours in: the GPU, the input tars, the
assets (and their hashes with --hash), free space for the stores still to write, write permission.
Prints one table; exit status 1 when a check FAILs. slurm/encode_array.sbatch runs it first.

    python -m stage1_encode.preflight --input TARS --output DATASET --assets DIR [--config FILE]
        [--hash] [--section.key value …]            the arguments of python -m stage1_encode
"""


def main(argv: list[str] | None = None) -> int:
    parser = command_line(
        "python -m stage1_encode.preflight", HELP, "Other arguments are the config overrides (--section.key value)."
    )
    parser.add_argument("--config", type=Path, help="Stage 1 TOML config")
    parser.add_argument("--input", help="directory, glob or URL (hf://datasets/…) of input tars")
    parser.add_argument("--output", type=Path, help="the dataset")
    parser.add_argument("--assets", type=Path, help="FLUX.1-schnell assets directory")
    parser.add_argument("--hash", action="store_true", help="hash the assets now (and cache the digests)")
    parser.add_argument("--allow-damaged-sources", action="store_true", help="the encode command's flag (checks nothing)")
    parser.add_argument("--text-from", type=Path, help="the text dataset an image-only run pairs with")
    args, rest = parser.parse_known_args(argv)
    missing = [f"--{name}" for name in ("input", "output", "assets") if getattr(args, name) is None]
    if missing:
        parser.error(f"the encode stage needs {', '.join(missing)}")
    cluster = system.Cluster.from_env(os.environ, torch.cuda.device_count())
    return print_table(encode_rows(args.input, args.output, args.assets, args.config, rest, args.hash, cluster, args.text_from))


def encode_rows(
    input_spec: str, output: Path, assets: Path, config_file: Path | None, overrides: list[str], rehash: bool,
    cluster: system.Cluster, text_from: Path | None = None,
) -> list[Row]:
    """One Stage 1 array task: its GPU, the input tars, the assets, the text dataset it pairs with
    (``--text-from``), and room in the dataset (for the image arrays alone when paired)."""
    rows = system.version_rows()
    try:
        config = load_config(config_file, parse_overrides(overrides))
    except ConfigError as e:
        return [*rows, Row("config", FAIL, str(e))]
    rows += [Row("config", OK, str(config_file or "built-in defaults")), system.encode_gpu_row(config.encoders.device, cluster)]
    tars_row, tars = input_row(input_spec)
    hashes_row, hashes = assets_row(assets, rehash)
    rows += [tars_row, hashes_row]
    if text_from is not None:
        rows.append(text_from_row(text_from, tars, config.storage.dtype, text_mode(config)))
    if hashes and (output / contract.DATASET_FILE).is_file():
        rows.append(dataset_encoders_row(output, hashes))
    rows += [
        storage.writable_row("output", output),
        dataset_space_row(output, tars, free_bytes(output), _raw_bytes_per_sample(config, assets, text_from is None)),
    ]
    return rows


# --------------------------------------------------------------------------- what the task reads


def input_row(spec: str) -> tuple[Row, list[TarSource]]:
    """Stage 1's own listing of ``--input`` (local or streamed), and the tars it found."""
    try:
        tars = list_tars(spec)
    except SourcesError as e:
        return Row("input", FAIL, str(e)), []
    return Row("input", OK, f"{len(tars):,} tars, {size(sum(t.size for t in tars))} in {spec}"), tars


def assets_row(assets: Path, rehash: bool) -> tuple[Row, Hashes | None]:
    """Complete and readable (``check_assets``), and their SHA-256 known: from ``asset_hashes``' cache,
    or hashed now with ``rehash`` (which also fills the cache for every array task)."""
    try:
        hashes = asset_hashes(assets) if rehash else cached_asset_hashes(assets)
    except AssetsError as e:
        return Row("assets", FAIL, "; ".join(line.strip() for line in str(e).splitlines())), None
    if hashes is None:
        detail = f"{assets} complete, SHA-256 not cached: every Stage 1 task would hash them first (run with --hash once)"
        return Row("assets", WARN, detail), None
    prints = ", ".join(f"{name} {_fingerprint(files)}" for name, files in hashes.items())
    return Row("assets", OK, f"{assets} complete, SHA-256 cached ({prints})"), hashes


def text_from_row(text_from: Path, tars: list[TarSource], storage_dtype: str, text_mode: str | None) -> Row:
    """``--text-from``: a text dataset, stored as this config stores and in its text mode, holding a store
    for every input tar."""
    try:
        text = open_text_dataset(text_from, tars, storage_dtype, text_mode)
    except Stage1Error as e:
        return Row("text dataset", FAIL, str(e))
    return Row("text dataset", OK, f"{text.root}: identity {text.identity.digest()}, a store for each of {len(tars):,} tars")


def dataset_encoders_row(dataset: Path, hashes: Hashes) -> Row:
    """Stage 1 refuses to add stores to a dataset encoded with other weights or tokenizers."""
    try:
        recorded = contract.read_identity(dataset).encoders
    except (ContractError, OSError, ValueError, KeyError) as e:
        return Row("dataset encoders", FAIL, f"{dataset}: unreadable {contract.DATASET_FILE}: {e}")
    mine, theirs = _flat(hashes), _flat(recorded)
    differing = sorted(rel for rel in mine.keys() | theirs.keys() if mine.get(rel) != theirs.get(rel))
    if differing:
        return Row("dataset encoders", FAIL, f"{dataset} was encoded with other files: {', '.join(differing)}")
    return Row("dataset encoders", OK, f"{dataset} was encoded with these assets")


def _flat(hashes: Hashes) -> dict[str, str]:
    return {rel: sha for files in hashes.values() for rel, sha in files.items()}


def _fingerprint(files: dict[str, str]) -> str:
    """8 hex digits over an encoder's (file, SHA-256) pairs: enough to tell two asset sets apart by eye."""
    return hashlib.sha256("".join(f"{rel}:{sha}\n" for rel, sha in sorted(files.items())).encode()).hexdigest()[:8]


# --------------------------------------------------------------------------- room for the stores


def raw_bytes_per_sample(image_size: int, t5_max_length: int, storage_dtype: str, assets: Path, with_text: bool = True) -> float:
    """Raw tensor bytes of one stored sample, from the config and the assets' own shapes (T5 width from
    its config.json, CLIP's, the AE's latent channels and downsampling from its weights' header);
    ``with_text=False``: the AE moments alone (``--text-from``)."""
    ae = autoencoder_params(assets)
    latent = image_size // 2 ** (len(ae.ch_mult) - 1)
    itemsize = 2 if storage_dtype == "bfloat16" else 4
    image = itemsize * 2 * ae.z_channels * latent * latent
    if not with_text:
        return image
    t5_dim = _config_value(assets / asset_loading.T5_DIR, "d_model")
    clip_dim = _config_value(assets / asset_loading.CLIP_DIR, "hidden_size")
    return image + itemsize * (t5_max_length * t5_dim + clip_dim)


def _raw_bytes_per_sample(config: EncodeConfig, assets: Path, with_text: bool) -> float | None:
    try:
        return raw_bytes_per_sample(config.image.size, config.text.t5_max_length, config.storage.dtype, assets, with_text)
    except (OSError, ValueError, KeyError, AssetsError):
        return None  # the assets row already says what is wrong with them


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
    return storage.space_row("output space", needed, free, basis)


def _config_value(folder: Path, key: str) -> Any:
    return json.loads((folder / "config.json").read_text())[key]


def _stored_bytes(store: Path) -> int:
    try:
        return contract.read_store_attrs(store).stored_bytes
    except (OSError, ValueError, ContractError):
        return 0  # unreadable attributes: inspect_shards reports those; here the store just does not count


if __name__ == "__main__":
    sys.exit(main())
