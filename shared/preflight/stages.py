"""The checks of each stage, in the order a job meets what they check."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TYPE_CHECKING

import torch

from shared import contract
from shared.assets.hub import free_bytes
from shared.inspect.report import count
from shared.preflight import inputs, storage, system
from shared.preflight.table import FAIL, OK, Row

if TYPE_CHECKING:
    from torchtitan.models.flux.model.args import FluxModelArgs

TRAIN_BYTES_PER_PARAM = 16
"""Training state in memory: fp32 weights, gradients and AdamW's two moments."""


def versions() -> list[Row]:
    return [
        system.python_row(tuple(sys.version_info[:3])),
        system.torch_row(torch.__version__, torch.version.cuda),
        system.torchtitan_row(system.installed_version("torchtitan")),
    ]


def encode_rows(
    input_spec: str, output: Path, assets: Path, config_file: Path | None, overrides: list[str], rehash: bool,
    cluster: system.Cluster,
) -> list[Row]:
    """One Stage 1 array task: its GPU, the input tars, the assets, and room in the dataset."""
    from stage1_encode.config import ConfigError, load_config, parse_overrides

    rows = versions()
    try:
        config = load_config(config_file, parse_overrides(overrides))
    except ConfigError as e:
        return [*rows, Row("config", FAIL, str(e))]
    rows += [Row("config", OK, str(config_file or "built-in defaults")), system.encode_gpu_row(config.encoders.device, cluster)]
    input_row, tars = inputs.input_row(input_spec)
    assets_row, hashes = inputs.assets_row(assets, rehash)
    rows += [input_row, assets_row]
    if hashes and (output / contract.DATASET_FILE).is_file():
        rows.append(inputs.dataset_encoders_row(output, hashes))
    rows += [
        storage.writable_row("output", output),
        storage.dataset_space_row(output, tars, free_bytes(output), _raw_bytes_per_sample(config, assets)),
    ]
    return rows


def _raw_bytes_per_sample(config: Any, assets: Path) -> float | None:
    from shared.encoders import AssetsError

    try:
        return storage.raw_bytes_per_sample(config.image.size, config.text.t5_max_length, config.storage.dtype, assets)
    except (OSError, ValueError, KeyError, AssetsError):
        return None  # the assets row already says what is wrong with them


def train_rows(
    args: list[str], cluster: system.Cluster, environ: Mapping[str, str], resolve: Callable[[str], str] = socket.gethostbyname
) -> list[Row]:
    """A Stage 2 job: GPUs for its parallel degrees, the network between nodes, its dataset, room for
    checkpoints. ``args`` are TorchTitan's (``--job.config_file FILE --section.key value …``)."""
    from torchtitan.config import ConfigManager

    from stage2_train.dataset_extent import incomplete_dataset_refusal
    from stage2_train.flavors import FLAVORS

    rows = versions()
    try:
        job = ConfigManager().parse_args(args)  # an unknown key exits 2 with TorchTitan's own message
    except (OSError, ValueError) as e:
        return [*rows, Row("config", FAIL, f"{type(e).__name__}: {e}")]
    flavor = FLAVORS.get(job.model.flavor)
    if flavor is None:
        return [*rows, Row("config", FAIL, f"unknown model.flavor {job.model.flavor!r} (known: {', '.join(FLAVORS)})")]
    rows.append(Row("config", OK, str(job.job.config_file)))
    nparams = model_parameters(flavor)
    cpu_sized = nparams * TRAIN_BYTES_PER_PARAM <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2
    p = job.parallelism
    degrees = {
        "replicate": p.data_parallel_replicate_degree, "shard": p.data_parallel_shard_degree,
        "tp": p.tensor_parallel_degree, "cp": p.context_parallel_degree, "pp": p.pipeline_parallel_degree,
    }
    model = f"{job.model.flavor} ({count(nparams)} parameters)"
    rows += [
        system.train_gpu_row(degrees, cluster, cpu_sized, model),
        system.socket_ifname_row(environ, cluster, system.interfaces()),
        system.rendezvous_row(environ, cluster, resolve),
    ]
    if not job.training.dataset_path:
        rows.append(Row("dataset", FAIL, "no dataset: give --dataset DIR (or --training.dataset_path)"))
    else:
        rows.append(inputs.train_identity_row(Path(job.training.dataset_path), job, flavor))
        refusal = incomplete_dataset_refusal(job)  # a resume trains on its pinned stores: never refused
        rows.append(Row("dataset extent", FAIL, refusal) if refusal else Row("dataset extent", OK, "may start"))
    dump = Path(job.job.dump_folder)
    rows.append(storage.writable_row("output", dump))
    if job.checkpoint.enable:
        copies = storage.checkpoint_copies(job.checkpoint.keep_latest_k, job.training.steps, job.checkpoint.interval)
        rows.append(storage.checkpoint_space_row(copies, nparams, free_bytes(dump / job.checkpoint.folder)))
    return rows


def model_parameters(flavor: FluxModelArgs) -> int:
    """Parameters of the Flux transformer, counted on the meta device (no memory, ~0.1 s for 12 B)."""
    from torchtitan.models.flux.model.model import FluxModel

    with torch.device("meta"):
        return sum(p.numel() for p in FluxModel(flavor).parameters())

