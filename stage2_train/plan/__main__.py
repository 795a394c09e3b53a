"""Size a Stage 2 run before it queues: build the real model at the real world size on fake tensors and
a fake process group, measure one training step per activation-checkpoint mode, and print per rank
what fits and what it costs.

    python -m stage2_train.plan --job.config_file configs/flux_schnell.toml \\
        --parallelism.data_parallel_replicate_degree 2 --parallelism.data_parallel_shard_degree 8 --gpu h100

One fake rank (rank 0 of the world) stands for all: under HSDP every rank holds the same shapes. Each
mode's step is measured at two batch sizes and the peak solved as linear in the batch (activations
are); the picked batch is then confirmed with one more step. Takes TorchTitan's ``--section.key
value`` overrides (as ``python -m stage2_train``) plus the options below; ``--json`` prints one JSON
object instead of the table.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torchtitan.config import ConfigManager

from stage2_train.cli.arguments import argument_problems
from stage2_train.infra.device import use_cpu_if_no_cuda
from stage2_train.model.flavors import FLAVORS
from stage2_train.plan.check import record_fits
from stage2_train.plan.planner import plan
from stage2_train.plan.probe import AC_MODES, MAX_BATCH, world_size
from stage2_train.plan.report import print_plan
from stage2_train.plan.sizing import (
    Assumptions,
    gpu_gib,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stage2_train.plan", description=__doc__.split("\n\n")[0],
                                epilog="Any other --section.key value is a TorchTitan override, as for python -m stage2_train.")  # fmt: skip
    gpu = p.add_mutually_exclusive_group(required=True)
    gpu.add_argument("--gpu", help="h100 | h200 | h100-80gb | h200-141gb (comma-separated: several)")
    gpu.add_argument("--gpu-memory", help="GiB per GPU (comma-separated: several)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device of the fake tensors")
    p.add_argument("--modes", default=",".join(AC_MODES), help="activation-checkpoint modes to plan (comma-separated)")
    p.add_argument("--gpus-per-node", type=int, default=0, help="default: the shard degree")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH, help="largest local batch to propose")
    defaults = Assumptions()
    p.add_argument("--mfu", type=float, default=defaults.mfu)
    p.add_argument("--peak-tflops", type=float, default=defaults.peak_tflops)
    p.add_argument("--nvlink-gbps", type=float, default=defaults.nvlink_gbps, help="GB/s bus bandwidth per GPU")
    p.add_argument("--network-gbps", type=float, default=defaults.network_gbps, help="GB/s per node")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--record-fits", action="store_true", help="add the fits to stage2_train/plan/fits.json (preflight's check)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    ours, titan = p.parse_known_args(argv)
    problems = argument_problems(titan)
    if problems:
        p.error("\n  ".join(problems))
    try:
        gpus = [gpu_gib(g) for g in (ours.gpu or ours.gpu_memory).split(",")]
        job = ConfigManager().parse_args(titan)
        modes = tuple(ours.modes.split(","))
        if job.model.flavor not in FLAVORS or not set(modes) <= set(AC_MODES):
            raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}; modes of {', '.join(AC_MODES)}")
        world_size(job)
    except ValueError as e:
        p.error(str(e))
    if ours.device == "cpu":
        use_cpu_if_no_cuda()
    a = Assumptions(ours.peak_tflops, ours.mfu, ours.nvlink_gbps, ours.network_gbps)
    gpus_per_node = ours.gpus_per_node or job.parallelism.data_parallel_shard_degree
    result = plan(job, gpus, torch.device(ours.device), a, modes, gpus_per_node, ours.max_batch)
    result["command"] = "python -m stage2_train.plan " + " ".join(sys.argv[1:] if argv is None else argv)
    if ours.record_fits:
        record_fits(job, result)
    if ours.json:
        print(json.dumps(result))
    else:
        print_plan(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
