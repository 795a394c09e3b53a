"""Does a Stage 2 config fit its GPUs? The planner's answer in a second, for preflight.

A plan's per-mode fit (peak bytes per rank as a function of the batch: ``plan_sizing.PeakEnvelope``'s
lines) is kept in ``fits.json`` beside this file, keyed by what shapes a rank's
memory: flavor, image size, T5 length, shard degree, AC mode, FSDP2 schedule and dtypes. The replicate
degree is not in the key: HSDP's all-reduce runs in place on the reduce-scatter output, so a rank's
memory does not depend on the number of nodes (the committed 2 x 8 and 8 x 8 plans agree; a test).
A config with no recorded fit is measured here on fake tensors (seconds for flux-tiny, minutes for
12 B), exactly as the planner measures it. ``python -m stage2_train.plan … --record-fits`` adds a
plan's fits to the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torchtitan.config import JobConfig

from stage2_train.infra.device import use_cpu_if_no_cuda
from stage2_train.infra.parallelize import compiles_blocks
from stage2_train.plan.sizing import GIB, PeakEnvelope, usable_bytes

FITS = Path(__file__).with_name("fits.json")
FALLBACK_MODE = "full"
"""The mode named when the config's own mode fits no batch: the least activation memory."""


def fit_key(job: JobConfig, mode: str | None = None) -> str:
    """What shapes one rank's step memory (see the module docstring), as one string."""
    ac, s2, t = job.activation_checkpoint, job.stage2, job.training
    mode = mode or ac.mode
    option = ac.selective_ac_option if mode == "selective" else ""
    return (f"{job.model.flavor} img{t.img_size} t5-{job.encoder.max_t5_encoding_len} "
            f"shard{job.parallelism.data_parallel_shard_degree} ac-{mode}{option} "
            f"reshard-{s2.fsdp_reshard_after_forward} prefetch{s2.fsdp_forward_prefetch}/{s2.fsdp_backward_prefetch} "
            f"{t.mixed_precision_param}/{t.mixed_precision_reduce}{' compiled' if compiles_blocks(job) else ''}")  # fmt: skip


def recorded_fits(path: Path = FITS) -> dict[str, list[list[float]]]:
    return json.loads(path.read_text()) if path.exists() else {}


def fits_of_plan(job: JobConfig, plan: dict[str, Any]) -> dict[str, list[list[float]]]:
    """A plan's fits under their keys (``job`` is the plan's config)."""
    from stage2_train.plan.probe import with_ac

    return {fit_key(with_ac(job, mode)): [list(line) for line in m["peak_lines"]] for mode, m in plan["modes"].items()}


def record_fits(job: JobConfig, plan: dict[str, Any], path: Path = FITS) -> None:
    fits = recorded_fits(path) | fits_of_plan(job, plan)
    path.write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(fits.items())) + "\n}\n")


def fit_for(job: JobConfig, mode: str | None = None) -> PeakEnvelope:
    """The recorded fit for ``job`` in ``mode`` (default: its own), else one measured now on fake tensors."""
    from stage2_train.plan.probe import PROBE_BATCHES, fake_world, fitted, measure_mode, with_ac, world_size

    mode = mode or job.activation_checkpoint.mode
    recorded = recorded_fits().get(fit_key(job, mode))
    if recorded:
        return PeakEnvelope(tuple((a, b) for a, b in recorded))
    device = torch.device(use_cpu_if_no_cuda())
    fake_world(world_size(job))
    try:
        return fitted(measure_mode(with_ac(job, mode), mode, device, PROBE_BATCHES)[1])
    finally:
        torch.distributed.destroy_process_group()


def memory_refusal(job: JobConfig, gpu_gib: float) -> tuple[str | None, str]:
    """(one line refusing the config and naming a setting that fits, or None; what was checked)."""
    usable = usable_bytes(gpu_gib)
    batch, mode = job.training.local_batch_size, job.activation_checkpoint.mode
    fit = fit_for(job)
    need = fit.at(batch)
    checked = f"batch {batch}, AC {mode}: {need / GIB:.1f} GiB peak per GPU of {usable / GIB:.1f} GiB usable ({gpu_gib:.1f} GiB GPU)"
    if need <= usable:
        return None, checked
    largest = fit.largest_batch(usable, batch - 1)
    if largest:
        instead = f"--training.local_batch_size {largest} fits"
    else:
        fallback = fit_for(job, FALLBACK_MODE).largest_batch(usable, batch)
        instead = (f"--activation_checkpoint.mode {FALLBACK_MODE} --training.local_batch_size {fallback} fits" if fallback
                   else "no batch fits in any AC mode: more GPUs per node (--parallelism.data_parallel_shard_degree)")  # fmt: skip
    return f"does not fit: {checked}; {instead} (python -m stage2_train.plan for the full plan)", checked
