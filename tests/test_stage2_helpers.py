"""Helpers for the Stage 2 tests (no tests here): tiny datasets in the Stage 1 format, parsed job
configs, and torchrun launches of ``python -m stage2_train``."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from fixtures.synthetic import write_synthetic_dataset
from shared.contract import Identity
from stage2_train.model.flavors import FLAVORS

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO_ROOT / "configs" / "flux_tiny.toml"
PRODUCTION_CONFIG = REPO_ROOT / "configs" / "flux_schnell.toml"
TORCHRUN = Path(sys.executable).with_name("torchrun")


def tiny_identity(**changes: object) -> Identity:
    """An identity matching the flux-tiny flavor and configs/flux_tiny.toml, stored as float32."""
    fields = {
        "t5_max_length": 256,
        "t5_dim": 32,
        "clip_dim": 32,
        "image_size": 256,
        "ae_params": dataclasses.asdict(FLAVORS["flux-tiny"].autoencoder_params),
        "storage_dtype": "float32",
        "encoders": {},
        "preprocessing": {},
        "code_version": "test",
    }
    return Identity(**{**fields, **changes})


def write_tiny_dataset(
    out: Path,
    stores: int = 2,
    samples_per_store: int = 12,
    samples_per_shard: int = 4,
    mean_t5_tokens: float = 24.0,
    **identity_changes: object,
) -> Path:
    """``identity_changes`` ``text_mode="compact"``: compact text, captions ``mean_t5_tokens`` long on average."""
    identity = tiny_identity(**identity_changes)
    return write_synthetic_dataset(out, identity, stores, samples_per_store, samples_per_shard, mean_t5_tokens=mean_t5_tokens)


def parse_job_config(*overrides: str, config_file: Path = TINY_CONFIG):
    """A TOML config (default configs/flux_tiny.toml) plus CLI overrides, through TorchTitan's own parser."""
    from torchtitan.config import ConfigManager

    return ConfigManager().parse_args(["--job.config_file", str(config_file), *overrides])


def torchrun_command(nproc: int, dataset: Path, dump: Path, *overrides: str) -> list[str]:
    return [
        str(TORCHRUN),
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "stage2_train",
        "--job.config_file",
        str(TINY_CONFIG),
        "--training.dataset_path",
        str(dataset),
        "--job.dump_folder",
        str(dump),
        *overrides,
    ]


def torchrun_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "WANDB_MODE": "offline"}


def run_stage2(nproc: int, dataset: Path, dump: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun_command(nproc, dataset, dump, *overrides),
        cwd=REPO_ROOT,
        env=torchrun_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
