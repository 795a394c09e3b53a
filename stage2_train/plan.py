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
import copy
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torchtitan.config import ConfigManager, JobConfig

from stage2_train.cli.arguments import argument_problems
from stage2_train.infra.device import use_cpu_if_no_cuda
from stage2_train.model.flavors import FLAVORS
from stage2_train.infra.parallelize import checkpoint_every
from stage2_train.plan_check import record_fits
from stage2_train.plan_memory import StepMemory
from stage2_train.plan_report import print_plan
from stage2_train.plan_sizing import (
    GIB,
    Assumptions,
    PeakEnvelope,
    Wire,
    assumptions_dict,
    checkpoint_bytes,
    gpu_gib,
    recompute_factor,
    samples_per_s_per_gpu,
    stored_bytes_per_sample,
    usable_bytes,
    wire,
)
from stage2_train.plan_step import BuiltStep, build, measure_step

AC_MODES = ("none", "selective", "full")
SELECTIVE_EVERY = "2"
"""``selective`` is planned as every other block (``selective_ac_option = "2"``)."""
PROBE_BATCHES = (2, 4)
MAX_BATCH = 64
"""Largest local batch the planner proposes: beyond it the global batch (x 16 GPUs: 1,024) is a
training decision, not a memory one."""


def with_ac(job: JobConfig, mode: str) -> JobConfig:
    job = copy.deepcopy(job)
    job.activation_checkpoint.mode = mode
    if mode == "selective":
        job.activation_checkpoint.selective_ac_option = SELECTIVE_EVERY
    return job


def fake_world(world_size: int) -> None:
    """Rank 0 of ``world_size`` on PyTorch's fake process group (collectives do nothing)."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)


def world_size(job: JobConfig) -> int:
    p = job.parallelism
    if p.data_parallel_shard_degree < 1 or p.data_parallel_replicate_degree < 1:
        raise ValueError("give both --parallelism.data_parallel_replicate_degree and data_parallel_shard_degree (>= 1)")
    return p.data_parallel_replicate_degree * p.data_parallel_shard_degree


def measure_mode(job: JobConfig, mode: str, device: torch.device, batches: tuple[int, ...]) -> tuple[BuiltStep, dict[int, StepMemory]]:
    """The model built with AC ``mode`` and its steps measured at ``batches``."""
    built = build(with_ac(job, mode), world_size(job), device, fake=True)
    return built, {b: measure_step(built, b) for b in batches}


def fitted(probes: dict[int, StepMemory]) -> PeakEnvelope:
    (b1, m1), (b2, m2) = sorted(probes.items())
    return PeakEnvelope.through(b1, m1.series, b2, m2.series)


def plan(job: JobConfig, gpus: list[float], device: torch.device, a: Assumptions, modes: tuple[str, ...],
         gpus_per_node: int, max_batch: int = MAX_BATCH, batches: tuple[int, int] = PROBE_BATCHES) -> dict[str, Any]:  # fmt: skip
    """The whole plan as one JSON-able dict (``print_plan`` prints it): the step measured once per AC
    mode, then for each GPU size the batch that fits, the pick and its confirming step."""
    flavor = copy.deepcopy(FLAVORS[job.model.flavor])
    flavor.update_from_config(job)
    with torch.device("meta"):
        from torchtitan.models.flux import FluxModel

        nparams, flops = flavor.get_nparams_and_flops(FluxModel(flavor), 0)
    p = job.parallelism
    fake_world(world_size(job))
    measured = {mode: measure_mode(job, mode, device, batches) for mode in modes}
    probes = {mode: m[1] for mode, m in measured.items()}
    fits = {mode: fitted(probes[mode]) for mode in modes}
    probe = probes[modes[0]][batches[0]]
    comm = wire(probe.collective_bytes, p.data_parallel_shard_degree, p.data_parallel_replicate_degree, gpus_per_node, a)
    builts = {mode: m[0] for mode, m in measured.items()}
    per_gpu = [fit_gpu(job, gpu, fits, flops, comm, builts, a, max_batch) for gpu in gpus]
    dist.destroy_process_group()
    per_sample, source = stored_bytes_per_sample(job.training.img_size, job.training.dataset_path)
    for g in per_gpu:
        g["read_bytes_per_s_per_node"] = per_sample * g["pick"]["samples_per_s_per_gpu"] * gpus_per_node
    return {
        "flavor": job.model.flavor, "image_size": job.training.img_size, "text_tokens": job.encoder.max_t5_encoding_len,
        "replicate": p.data_parallel_replicate_degree, "shard": p.data_parallel_shard_degree, "gpus_per_node": gpus_per_node,
        "device": str(device), "params": nparams, "flops_per_sample": flops,
        "config_batch": job.training.local_batch_size, "config_ac_mode": job.activation_checkpoint.mode,
        "state_bytes_per_rank": probe.state_bytes,
        "max_batch": max_batch,
        "modes": {mode: {"selective_ac_option": SELECTIVE_EVERY if mode == "selective" else "",
                         "peak_lines": fits[mode].lines,
                         "probes": {b: memory_dict(m) for b, m in probes[mode].items()}} for mode in modes},
        "gpus": per_gpu,
        "wire_per_rank_per_step": asdict(comm),
        "checkpoint_bytes": {"per_rank": probe.state_bytes["parameters"] + probe.state_bytes["optimizer_state"],
                             **checkpoint_bytes(nparams)},
        "read": {"bytes_per_sample": per_sample, "source": source},
        "assumptions": assumptions_dict(a),
    }  # fmt: skip


def fit_gpu(job: JobConfig, gpu: float, fits: dict[str, PeakEnvelope], flops: int, comm: Wire,
            builts: dict[str, BuiltStep], a: Assumptions, max_batch: int) -> dict[str, Any]:  # fmt: skip
    """For one GPU size: each mode's largest batch (up to ``max_batch``) and roofline rate; the pick
    (highest rate, then less recompute) confirmed by one more step at its batch."""
    usable = usable_bytes(gpu)
    modes = {}
    for mode, fit in fits.items():
        largest = fit.largest_batch(usable, max_batch)
        every = checkpoint_every(with_ac(job, mode).activation_checkpoint)
        rate = samples_per_s_per_gpu(largest, flops, recompute_factor(mode, every), comm, a) if largest else 0.0
        modes[mode] = {"largest_batch": largest, "peak_bytes": fit.at(largest) if largest else None, "samples_per_s_per_gpu": rate}
    best = max(modes, key=lambda m: (modes[m]["samples_per_s_per_gpu"], -AC_MODES.index(m)))
    batch = modes[best]["largest_batch"]
    confirmed = memory_dict(measure_step(builts[best], batch)) if batch else None
    pick = {"mode": best, "selective_ac_option": SELECTIVE_EVERY if best == "selective" else "", "batch": batch,
            "samples_per_s_per_gpu": modes[best]["samples_per_s_per_gpu"], "confirmed": confirmed}  # fmt: skip
    return {"gpu_gib": gpu, "usable_bytes": usable, "modes": modes, "pick": pick}


def memory_dict(m: StepMemory) -> dict[str, Any]:
    return {"peak_gib": m.peak_bytes / GIB, "peak_phase": m.peak_phase,
            "at_peak_gib": {k: v / GIB for k, v in m.at_peak.items()}, "gathered_gib": m.gathered_at_peak / GIB}  # fmt: skip


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
    p.add_argument("--record-fits", action="store_true", help="add the fits to stage2_train/plan_fits.json (preflight's check)")
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
