"""What the job reads: the input tars, the encoder assets, and a dataset's identity."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from shared import contract
from shared.contract import ContractError
from shared.encoders import AssetsError, asset_hashes, cached_asset_hashes
from shared.inspect.report import size
from shared.preflight.table import FAIL, OK, WARN, Row
from stage1_encode.sources import SourcesError, TarSource, list_tars

if TYPE_CHECKING:
    from torchtitan.config import JobConfig
    from torchtitan.models.flux.model.args import FluxModelArgs

Hashes = dict[str, dict[str, str]]


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


def train_identity_row(dataset: Path, job_config: JobConfig, flavor: FluxModelArgs) -> Row:
    """Stage 2's own identity check, plus at least one committed store to train on."""
    from stage2_train.identity import identity_differences

    try:
        identity = contract.read_identity(dataset)
    except (ContractError, OSError, ValueError, KeyError) as e:
        return Row("dataset", FAIL, f"{dataset}: {e}")
    differences = identity_differences(identity, flavor, job_config)
    if differences:
        return Row("dataset", FAIL, f"{dataset} does not fit {job_config.model.flavor}: {'; '.join(differences)}")
    stores = len(contract.committed_store_paths(dataset))
    if not stores:
        return Row("dataset", FAIL, f"{dataset}: identity fits, but no committed stores to train on")
    return Row("dataset", OK, f"{dataset}: identity {identity.digest()} fits {job_config.model.flavor}, {stores:,} stores")


def _flat(hashes: Hashes) -> dict[str, str]:
    return {rel: sha for files in hashes.values() for rel, sha in files.items()}


def _fingerprint(files: dict[str, str]) -> str:
    """8 hex digits over an encoder's (file, SHA-256) pairs: enough to tell two asset sets apart by eye."""
    return hashlib.sha256("".join(f"{rel}:{sha}\n" for rel, sha in sorted(files.items())).encode()).hexdigest()[:8]
