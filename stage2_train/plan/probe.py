"""Measuring one rank's training step on fake tensors: the fake world, a config per AC mode, the
per-batch probes and the peak envelope fitted through them (``plan.planner`` and ``plan.check`` use it)."""


from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torchtitan.config import JobConfig

from stage2_train.plan.memory import StepMemory
from stage2_train.plan.sizing import (
    PeakEnvelope,
)
from stage2_train.plan.step import BuiltStep, build, measure_step

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
