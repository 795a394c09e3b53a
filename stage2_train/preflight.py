"""Check in seconds what would fail a Stage 2 job hours in; print one table, exit 1 on any FAIL.

    python -m stage2_train.preflight --config FILE [--dataset DIR] [--output DUMP_FOLDER]
        [--section.key value …]                     TorchTitan's overrides, as python -m stage2_train

Stage 2's own checks (its config and flavor, the dataset's identity against them, room for
checkpoints) beside the rows every stage shares (``shared.preflight``).
"""

from __future__ import annotations

import math
import os
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torchtitan.config import ConfigManager, JobConfig
from torchtitan.models.flux.model.args import FluxModelArgs

from shared import contract, pairing
from shared.assets.hub import free_bytes
from shared.contract import ContractError
from shared.preflight import storage, system
from shared.preflight.table import FAIL, OK, Row, command_line, print_table
from shared.units import count, size
from stage2_train.flavors import FLAVORS
from stage2_train.dataset_extent import incomplete_dataset_refusal
from stage2_train.identity_check import identity_differences

TRAIN_BYTES_PER_PARAM = 16
"""Training state in memory: fp32 weights, gradients and AdamW's two moments."""
CHECKPOINT_BYTES_PER_PARAM = 12
"""A TorchTitan checkpoint holds fp32 weights and AdamW's two fp32 moments."""


def main(argv: list[str] | None = None) -> int:
    parser = command_line(
        "python -m stage2_train.preflight", __doc__, "Other arguments are TorchTitan's config overrides (--section.key value)."
    )
    parser.add_argument("--config", type=Path, help="TorchTitan TOML (or --job.config_file FILE)")
    parser.add_argument("--output", type=Path, help="the dump folder (--job.dump_folder)")
    parser.add_argument("--dataset", type=Path, help="the Stage 1 dataset (--training.dataset_path)")
    args, rest = parser.parse_known_args(argv)
    titan = ["--job.config_file", str(args.config)] if args.config else []
    titan += rest
    titan += ["--training.dataset_path", str(args.dataset)] if args.dataset else []
    titan += ["--job.dump_folder", str(args.output)] if args.output else []
    if "--job.config_file" not in titan:
        parser.error("the train stage needs --config FILE (or --job.config_file FILE)")
    return print_table(train_rows(titan, system.Cluster.from_env(os.environ, torch.cuda.device_count()), os.environ))


def train_rows(
    args: list[str], cluster: system.Cluster, environ: Mapping[str, str], resolve: Callable[[str], str] = socket.gethostbyname
) -> list[Row]:
    """A Stage 2 job: GPUs for its parallel degrees, the network between nodes, its dataset, room for
    checkpoints. ``args`` are TorchTitan's (``--job.config_file FILE --section.key value …``)."""
    rows = system.version_rows()
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
        rows.append(train_identity_row(Path(job.training.dataset_path), job, flavor))
        refusal = incomplete_dataset_refusal(job)  # a resume trains on its pinned stores: never refused
        rows.append(Row("dataset extent", FAIL, refusal) if refusal else Row("dataset extent", OK, "may start"))
    dump = Path(job.job.dump_folder)
    rows.append(storage.writable_row("output", dump))
    if job.checkpoint.enable:
        copies = checkpoint_copies(job.checkpoint.keep_latest_k, job.training.steps, job.checkpoint.interval)
        rows.append(checkpoint_space_row(copies, nparams, free_bytes(dump / job.checkpoint.folder)))
    return rows


def model_parameters(flavor: FluxModelArgs) -> int:
    """Parameters of the Flux transformer, counted on the meta device (no memory, quick even for 12 B)."""
    from torchtitan.models.flux.model.model import FluxModel

    with torch.device("meta"):
        return sum(p.numel() for p in FluxModel(flavor).parameters())


def train_identity_row(dataset: Path, job_config: JobConfig, flavor: FluxModelArgs) -> Row:
    """Stage 2's own identity check, plus at least one committed store to train on."""
    try:
        identity = contract.read_identity(dataset)
    except (ContractError, OSError, ValueError, KeyError) as e:
        return Row("dataset", FAIL, f"{dataset}: {e}")
    differences = identity_differences(identity, flavor, job_config)
    if differences:
        return Row("dataset", FAIL, f"{dataset} does not fit {job_config.model.flavor}: {'; '.join(differences)}")
    if not identity.stores_text:  # an image dataset of the resolution ladder: its text dataset, unchanged
        try:
            pairing.check_stores(dataset, pairing.TextDataset.of(dataset))
        except (ContractError, OSError, ValueError) as e:
            return Row("dataset", FAIL, str(e))
    stores = len(contract.committed_store_paths(dataset))
    if not stores:
        return Row("dataset", FAIL, f"{dataset}: identity fits, but no committed stores to train on")
    return Row("dataset", OK, f"{dataset}: identity {identity.digest()} fits {job_config.model.flavor}, {stores:,} stores")


def checkpoint_copies(keep_latest_k: int, steps: int, interval: int) -> int:
    """Checkpoints on disk at once: TorchTitan writes the next before it purges the oldest; 0 keeps all."""
    return keep_latest_k + 1 if keep_latest_k > 0 else math.ceil(steps / interval)


def checkpoint_space_row(copies: int, nparams: int, free: int) -> Row:
    needed = copies * nparams * CHECKPOINT_BYTES_PER_PARAM
    return storage.space_row(
        "checkpoint space", needed, free, f"{copies} checkpoint(s) x {size(nparams * CHECKPOINT_BYTES_PER_PARAM)}"
    )


if __name__ == "__main__":
    sys.exit(main())
