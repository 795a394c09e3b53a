"""Check in seconds what would fail a Stage 2 job hours in; print one table, exit 1 on any FAIL.

    python -m stage2_train.preflight --job.config_file FILE [--training.dataset_path DIR] [--section.key value …]

It takes exactly the arguments of ``python -m stage2_train`` (``slurm/train.sbatch`` passes both the
same ones) and refuses any other before a job starts.

Stage 2's own checks (its config and flavor, the dataset's identity against them, room for
checkpoints) beside the rows every stage shares (``preflight``).
"""

from __future__ import annotations

import copy
import math
import os
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torchtitan.config import ConfigManager, JobConfig
from torchtitan.models.flux.model.args import FluxModelArgs

from preflight import storage, system
from preflight.storage import free_bytes
from preflight.table import FAIL, OK, Row, command_line, print_table
from shared import contract
from shared.contract import ContractError
from shared.units import count, size
from stage2_train.cli.arguments import argument_problems
from stage2_train.data.extent import incomplete_dataset_refusal
from stage2_train.data.identity_check import identity_differences
from stage2_train.data.manifest import read_manifest
from stage2_train.infra.accumulation import global_batch_refusal
from stage2_train.model.flavors import FLAVORS
from stage2_train.infra.slurm_job import time_limit_row
from stage2_train.plan.check import memory_refusal
from stage2_train.refusals import committed_samples, config_file_refusal, dataset_size_refusal, job_refusals

TRAIN_BYTES_PER_PARAM = 16
"""Training state in memory: fp32 weights, gradients and AdamW's two moments."""
CHECKPOINT_BYTES_PER_PARAM = 12
"""A TorchTitan checkpoint holds fp32 weights and AdamW's two fp32 moments."""


HELP = """Checks in seconds what would fail a Stage 2 job hours in: GPUs for the parallel degrees, the
network between nodes, the dataset's identity against the model, room for checkpoints. Prints one
table; exit status 1 when a check FAILs, 2 for an argument python -m stage2_train would refuse.
slurm/train.sbatch runs it first, with the same arguments as the trainer.

    python -m stage2_train.preflight --job.config_file FILE [--training.dataset_path DIR] [--section.key value …]
"""


def main(argv: list[str] | None = None) -> int:
    parser = command_line("python -m stage2_train.preflight", HELP, "python -m stage2_train --help lists the options.")
    _, titan = parser.parse_known_args(argv)
    problems = argument_problems(titan)
    if problems:
        parser.error("\n  ".join(problems))
    if not any(a.split("=", 1)[0] == "--job.config_file" for a in titan):
        parser.error("the train stage needs --job.config_file FILE")
    return print_table(train_rows(titan, system.Cluster.from_env(os.environ, torch.cuda.device_count()), os.environ))


def train_rows(
    args: list[str], cluster: system.Cluster, environ: Mapping[str, str], resolve: Callable[[str], str] = socket.gethostbyname
) -> list[Row]:
    """A Stage 2 job: GPUs for its parallel degrees, the network between nodes, its dataset, room for
    checkpoints. ``args`` are TorchTitan's (``--job.config_file FILE --section.key value …``)."""
    rows = system.version_rows()
    config_refusal = config_file_refusal(_config_file(args))
    if config_refusal:
        return [*rows, Row("config", FAIL, config_refusal)]
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
    rows += [Row("request", FAIL, line) for line in job_refusals(job)]
    dp_degree = data_parallel_degree(degrees, cluster)
    if job.training.global_batch_size >= 0:  # gradient accumulation asked for
        rows.append(global_batch_row(job, dp_degree))
    rows.append(gpu_memory_row(job, degrees, cluster))
    if not job.training.dataset_path:
        rows.append(Row("dataset", FAIL, "no dataset: give --training.dataset_path DIR"))
    else:
        dataset = Path(job.training.dataset_path)
        rows.append(train_identity_row(dataset, job, flavor))
        if rows[-1].status == OK:  # one micro-batch on every rank, as the sampler needs (at least one rank)
            batch = job.training.local_batch_size * (dp_degree or 1)
            samples = committed_samples(dataset)
            refusal = dataset_size_refusal(dataset, samples, batch)
            rows.append(Row("dataset size", FAIL, refusal) if refusal else Row(
                "dataset size", OK, f"{samples:,} samples fill a global batch of {batch:,}"
            ))
        refusal = incomplete_dataset_refusal(job)  # a resume trains on its pinned stores: never refused
        rows.append(Row("dataset extent", FAIL, refusal) if refusal else Row("dataset extent", OK, "may start"))
    dump = Path(job.job.dump_folder)
    rows.append(storage.writable_row("output", dump))
    time_limit = time_limit_row(dump, environ)  # in a Slurm job: training left per start after start-up
    if time_limit is not None:
        rows.append(time_limit)
    if job.checkpoint.enable:
        copies = checkpoint_copies(job.checkpoint.keep_latest_k, job.training.steps, job.checkpoint.interval)
        rows.append(checkpoint_space_row(copies, nparams, free_bytes(dump / job.checkpoint.folder)))
    return rows


def data_parallel_degree(degrees: Mapping[str, int], cluster: system.Cluster) -> int | None:
    """Replicate x shard, with an automatic shard degree from the allocation's GPUs as TorchTitan resolves
    it; ``None`` when only the job itself will know (no GPUs seen here)."""
    shard = resolved_shard(degrees, cluster)
    return degrees["replicate"] * shard if shard >= 1 else None


def global_batch_row(job_config: JobConfig, dp_degree: int | None) -> Row:
    """``training.global_batch_size`` against the local batch and the data-parallel degree."""
    training = job_config.training
    if dp_degree is None:
        return Row("global batch", OK, f"{training.global_batch_size}: checked against the data-parallel degree at start")
    refusal = global_batch_refusal(training.global_batch_size, training.local_batch_size, dp_degree)
    if refusal:
        return Row("global batch", FAIL, refusal)
    micro_batches = training.global_batch_size // (training.local_batch_size * dp_degree)
    return Row(
        "global batch",
        OK,
        f"{training.global_batch_size} = {micro_batches} micro-batch(es) x {dp_degree} data-parallel rank(s) x "
        f"{training.local_batch_size} per optimizer step",
    )


def _config_file(args: list[str]) -> str:
    """The value of ``--job.config_file`` (``main`` made sure it is given)."""
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name == "--job.config_file":
            return value or (args[i + 1] if i + 1 < len(args) else "")
    return ""


def resolved_shard(degrees: Mapping[str, int], cluster: system.Cluster) -> int:
    """The shard degree; an automatic one (-1) from the allocation's GPUs, as TorchTitan resolves it."""
    if degrees["shard"] != -1:
        return degrees["shard"]
    world = cluster.nodes * (cluster.allocated_gpus or cluster.visible_gpus)
    return world // (degrees["replicate"] * degrees["tp"] * degrees["cp"] * degrees["pp"])


def gpu_memory_row(job_config: JobConfig, degrees: Mapping[str, int], cluster: system.Cluster) -> Row:
    """The planner's peak per GPU for this config against the GPU's memory (``plan_check``): the real
    GPU's when there is one, else ``--stage2.gpu_memory_gib``; neither: not checked."""
    gib = job_config.stage2.gpu_memory_gib
    if not gib and torch.cuda.is_available():
        gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    if not gib:
        return Row("GPU memory", OK, "not checked: no GPU here (--stage2.gpu_memory_gib GiB checks it)")
    shard = resolved_shard(degrees, cluster)
    if shard < 1:
        return Row("GPU memory", OK, "not checked: the shard degree is decided at start (give it to check)")
    job_config = copy.deepcopy(job_config)
    job_config.parallelism.data_parallel_shard_degree = shard
    try:
        refusal, checked = memory_refusal(job_config, gib)
    except ValueError as e:  # a setting the planner cannot build (parallelize refuses it in one line)
        return Row("GPU memory", FAIL, str(e))
    return Row("GPU memory", FAIL, refusal) if refusal else Row("GPU memory", OK, checked)


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
    try:  # what the trainer's rank 0 reads at start (a ladder dataset: its text dataset, unchanged)
        stores = len(read_manifest(dataset, identity).stores)
    except (ContractError, OSError, ValueError) as e:
        return Row("dataset", FAIL, str(e))
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
