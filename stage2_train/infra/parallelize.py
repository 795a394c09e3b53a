"""How the Flux transformer is distributed — what TorchTitan 0.2.2's ``parallelize_flux`` gets wrong or
leaves out, fixed for Stage 2.

* Data parallel: FSDP2 over ["dp_replicate", "fsdp"] (HSDP) or ["fsdp"] when sharding. With a shard
  degree of 1 the stock code wraps nothing and replicas never synchronise gradients; here replicas
  become HSDP with a shard dimension of 1 — parameters replicated, gradients all-reduced.
  TorchTitan's ``apply_fsdp`` does the wrapping (gradient division stays off: the loss is already
  divided by the global latent count). On gloo, which lacks ``PREMUL_SUM``, reductions are plain sums.
* Activation checkpointing: none, every block ("full"), or every n-th block ("selective" with an
  integer option, TorchTitan's meaning) — stock Flux checkpoints every block for any mode.
* ``compile.enable`` with "model" in ``compile.components`` compiles each block (stock compiles only
  the loss).
* FSDP2 explicit forward/backward prefetch depth and reshard-after-forward of the blocks from
  ``[stage2]`` (stock has no prefetch knobs and ignores ``fsdp_reshard_after_forward``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule
from torchtitan.config import TORCH_DTYPE_MAP, JobConfig
from torchtitan.config.job_config import ActivationCheckpoint, Compile
from torchtitan.distributed import ParallelDims
from torchtitan.models.flux.infra.parallelize import apply_fsdp
from torchtitan.tools.logging import logger

from stage2_train.job_config import Stage2
from stage2_train.refusals import Refusal


def _blocks(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, name) of every transformer block, double blocks first, in forward order."""
    return [
        (parent, name)
        for parent in (model.double_blocks, model.single_blocks)
        for name, _ in parent.named_children()
    ]


def checkpoint_every(ac: ActivationCheckpoint) -> int | None:
    """Every how many blocks to checkpoint (``None``: no AC); refuses modes Stage 2 does not offer."""
    if ac.mode == "none":
        return None
    if ac.mode == "full":
        return 1
    if ac.mode == "selective" and ac.selective_ac_option.isdigit() and int(ac.selective_ac_option) > 0:
        return int(ac.selective_ac_option)
    raise Refusal(
        f"activation_checkpoint mode={ac.mode!r} selective_ac_option={ac.selective_ac_option!r} is not offered: "
        "use mode none, full (every block) or selective with an integer n (every n-th block)"
    )


def apply_ac(model: nn.Module, ac: ActivationCheckpoint) -> None:
    every = checkpoint_every(ac)
    if every is None:
        return
    for position, (parent, name) in enumerate(_blocks(model), start=1):
        if position % every == 0:
            block = checkpoint_wrapper(
                parent.get_submodule(name),
                preserve_rng_state=ac.preserve_rng_state,
                determinism_check=ac.determinism_check,
                early_stop=ac.early_stop,
                debug=ac.debug,
            )
            parent.register_module(name, block)
    logger.info(f"Activation checkpointing: every {every} of {len(_blocks(model))} blocks")


def compiles_blocks(job_config: JobConfig) -> bool:
    """Whether the trainer compiles each block (the planner models it; preflight's fits tell it apart)."""
    return job_config.compile.enable and "model" in job_config.compile.components


def apply_compile(model: nn.Module, compile_config: Compile) -> None:
    """Compile each block on its own: the repeated structure compiles once and graphs stay small."""
    for parent, name in _blocks(model):
        compiled = torch.compile(parent.get_submodule(name), backend=compile_config.backend, fullgraph=True)
        parent.register_module(name, compiled)
    logger.info(f"Compiled each Flux block with torch.compile (backend {compile_config.backend})")


def apply_fsdp_schedule(model: nn.Module, stage2: Stage2) -> None:
    """FSDP2's explicit prefetching and reshard-after-forward for the blocks (``[stage2] fsdp_*``).

    Block i's forward starts the all-gathers of blocks i+1..i+n, its backward those of i-1..i-n, in
    forward order over double then single blocks. TorchTitan's ``apply_fsdp`` takes neither setting."""
    blocks = [parent.get_submodule(name) for parent, name in _blocks(model)]
    for block in blocks:
        block.set_reshard_after_forward(stage2.fsdp_reshard_after_forward)
    for i, block in enumerate(blocks):
        if stage2.fsdp_forward_prefetch > 0 and i + 1 < len(blocks):
            block.set_modules_to_forward_prefetch(blocks[i + 1 : i + 1 + stage2.fsdp_forward_prefetch])
        if stage2.fsdp_backward_prefetch > 0 and i > 0:
            block.set_modules_to_backward_prefetch(blocks[max(0, i - stage2.fsdp_backward_prefetch) : i][::-1])
    logger.info(
        f"FSDP2 prefetch: forward {stage2.fsdp_forward_prefetch}, backward {stage2.fsdp_backward_prefetch} blocks; "
        f"reshard after forward: {stage2.fsdp_reshard_after_forward}"
    )


def data_parallel_mesh(parallel_dims: ParallelDims) -> DeviceMesh:
    """The mesh FSDP2 wraps over: TorchTitan's when sharding, else replicas x a shard dimension of 1."""
    if parallel_dims.dp_shard_enabled:
        names = ["dp_replicate", "fsdp"] if parallel_dims.dp_replicate_enabled else ["fsdp"]
        return parallel_dims.get_mesh(names)
    return init_device_mesh(
        parallel_dims.world_mesh.device_type,
        (parallel_dims.dp_replicate, 1),
        mesh_dim_names=("dp_replicate", "fsdp"),
    )


def parallelize_precomputed_flux(model: nn.Module, parallel_dims: ParallelDims, job_config: JobConfig) -> nn.Module:
    """TorchTitan's ``parallelize_fn``: AC, then per-block compile, then FSDP2/HSDP (TorchTitan's order)."""
    unsupported = {"tensor": parallel_dims.tp, "pipeline": parallel_dims.pp, "context": parallel_dims.cp}
    if any(degree > 1 for degree in unsupported.values()):
        raise Refusal(f"Stage 2 trains with data parallelism only; got degrees {unsupported}")
    apply_ac(model, job_config.activation_checkpoint)
    if compiles_blocks(job_config):
        apply_compile(model, job_config.compile)
    if parallel_dims.dp_enabled:
        mesh = data_parallel_mesh(parallel_dims)
        apply_fsdp(
            model,
            mesh,
            param_dtype=TORCH_DTYPE_MAP[job_config.training.mixed_precision_param],
            reduce_dtype=TORCH_DTYPE_MAP[job_config.training.mixed_precision_reduce],
            cpu_offload=job_config.training.enable_cpu_offload,
        )
        if dist.get_backend() == "gloo":
            for module in model.modules():
                if isinstance(module, FSDPModule):
                    module.set_force_sum_reduction_for_comms(True)
        apply_fsdp_schedule(model, job_config.stage2)
        logger.info(f"Applied FSDP2 over mesh {mesh} (replicate x shard)")
    return model
