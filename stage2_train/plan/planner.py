"""The plan: per AC mode the peak envelope, the largest batch that fits each GPU, communication,
checkpoint size, read rate and a roofline speed (``python -m stage2_train.plan`` prints it)."""


from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist
from torchtitan.config import JobConfig

from stage2_train.infra.parallelize import checkpoint_every, compiles_blocks
from stage2_train.model.flavors import FLAVORS
from stage2_train.plan.memory import StepMemory
from stage2_train.plan.probe import (
    AC_MODES,
    MAX_BATCH,
    PROBE_BATCHES,
    SELECTIVE_EVERY,
    fake_world,
    fitted,
    measure_mode,
    with_ac,
    world_size,
)
from stage2_train.plan.sizing import (
    GIB,
    Assumptions,
    PeakEnvelope,
    Wire,
    assumptions_dict,
    checkpoint_bytes,
    recompute_factor,
    samples_per_s_per_gpu,
    stored_bytes_per_sample,
    usable_bytes,
    wire,
)
from stage2_train.plan.step import COMPILE_NOTE, BuiltStep, measure_step


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
        "step_model": COMPILE_NOTE if compiles_blocks(job) else "eager blocks",
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
