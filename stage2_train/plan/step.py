"""One Stage 2 training step built the way the trainer builds it, for the planner to measure.

The model comes from TorchTitan's ``Trainer.__init__`` recipe (meta device, our ``parallelize_fn``,
``to_empty``, ``init_weights``, TorchTitan's optimizer builder); the step is ``Trainer.train_step``'s
(zero_grad, our flow-matching inputs and loss, backward, gradient clipping, optimizer step). It runs
on whatever process group and tensor mode the caller set up: a fake process group and fake tensors
for the planner, gloo and real tensors in the test that holds the planner to a real run.

Per-block compile (``compile.enable``) is modelled, not run: each block goes through ``torch.compile``
as the trainer's, with a backend (``MIN_CUT_BACKEND``) that does what Inductor does before code
generation — its decompositions, its joint-graph passes and AOTAutograd's min-cut partitioner, which
decides what the forward saves and what the backward recomputes — and then runs the two graphs op
by op instead of generating kernels. So the saved activations are Inductor's choice; what is not
modelled is the fusion of temporaries inside a kernel (each op's output is materialised, and freed
after its last use). FP8 (model converters) is left out: its effect is measured on the GPU and
stated in the calibration.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass, field

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torchtitan.components.loss import build_mse_loss
from torchtitan.components.optimizer import OptimizersContainer, build_optimizers
from torchtitan.config import TORCH_DTYPE_MAP, JobConfig
from torchtitan.distributed import ParallelDims
from torchtitan.distributed import utils as dist_utils
from torchtitan.models.flux import FluxModel
from torchtitan.tools import utils

from shared import contract
from stage2_train.infra.parallelize import compiles_blocks, parallelize_precomputed_flux
from stage2_train.model.flavors import FLAVORS, PrecomputedFluxArgs
from stage2_train.plan.memory import MemoryTimeline, StepMemory, state_tensors
from stage2_train.step import flow_matching_batch, step_generator


@dataclass
class BuiltStep:
    """A parallelized model, its optimizer and what a step needs."""

    job: JobConfig
    args: PrecomputedFluxArgs
    model: nn.Module
    optimizers: OptimizersContainer
    parallel_dims: ParallelDims
    device: torch.device
    tensors: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)
    """Entered around every step: a ``FakeTensorMode`` for fake tensors."""
    amp: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)
    """Entered around forward and loss, as the trainer's ``maybe_enable_amp`` (see ``amp_of``)."""


def parallel_dims_of(job: JobConfig, world_size: int) -> ParallelDims:
    p = job.parallelism
    return ParallelDims(
        dp_replicate=p.data_parallel_replicate_degree, dp_shard=p.data_parallel_shard_degree,
        cp=p.context_parallel_degree, tp=p.tensor_parallel_degree, pp=p.pipeline_parallel_degree,
        ep=p.expert_parallel_degree, etp=p.expert_tensor_parallel_degree, world_size=world_size,
    )  # fmt: skip


MIN_CUT_BACKEND = "plan_min_cut"
"""The ``torch.compile`` backend the planner compiles blocks with (see the module docstring)."""
COMPILE_NOTE = "compiled blocks modelled with Inductor's decompositions and AOTAutograd's min-cut partitioner, no fusion of temporaries"


def _run_graph(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):  # noqa: ANN202
    """An AOTAutograd "compiler" that generates no code: the graph runs op by op on whatever tensors come
    (fake ones in the planner), each value freed after its last use, the inputs as they are consumed."""
    del example_inputs

    def run(args: list[torch.Tensor]):  # noqa: ANN202
        return torch.fx.Interpreter(gm).boxed_run(args)

    run._boxed_call = True
    return run


@functools.cache
def register_min_cut_backend() -> str:
    """Registers ``MIN_CUT_BACKEND`` with dynamo: Inductor's decomposition table and partition function
    (its joint-graph passes, then ``min_cut_rematerialization_partition(compiler="inductor")``), no codegen."""
    from torch._dynamo import register_backend
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.compile_fx import partition_fn
    from torch._inductor.decomposition import select_decomp_table

    backend = aot_autograd(fw_compiler=_run_graph, bw_compiler=_run_graph, partition_fn=partition_fn,
                           decompositions=select_decomp_table())  # fmt: skip
    register_backend(backend, name=MIN_CUT_BACKEND)
    return MIN_CUT_BACKEND


def as_planned(job: JobConfig) -> JobConfig:
    """``job`` as the fake step runs it: per-block compile through ``MIN_CUT_BACKEND``, no model
    converters (FP8)."""
    job = copy.deepcopy(job)
    if job.compile.enable:
        job.compile.backend = register_min_cut_backend()
    job.model.converters = []
    return job


def amp_of(parallel_dims: ParallelDims, job: JobConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The trainer's mixed precision: with data parallelism our parallelize wraps the model in FSDP2,
    which casts (no autocast); without it (one GPU) TorchTitan's autocast to ``mixed_precision_param``."""
    if parallel_dims.dp_enabled:
        return contextlib.nullcontext()
    return dist_utils.maybe_enable_amp(parallel_dims, job.training.mixed_precision_param, device.type)


@contextlib.contextmanager
def compile_settings():
    """Room in dynamo's cache for every AC mode the planner builds in one process (they share the
    blocks' code). Shapes are dynamo's default: static at batch 1, the batch dimension symbolic from the
    second batch size on, so every probe batch after the first runs the same graphs (``PeakEnvelope``
    solves per op) — their partition decided at the first probe batch."""
    import torch._dynamo

    with torch._dynamo.config.patch(recompile_limit=64):
        yield


def build(job: JobConfig, world_size: int, device: torch.device, fake: bool) -> BuiltStep:
    """The trainer's model and optimizer for ``job`` on the current process group (see the module
    docstring), with fake tensors when ``fake`` (the mesh is built before: it reads tensor values)."""
    job = as_planned(job)
    args = copy.deepcopy(FLAVORS[job.model.flavor])
    args.update_from_config(job)
    parallel_dims = parallel_dims_of(job, world_size)
    parallel_dims.build_mesh()
    with torch.device("meta"), utils.set_default_dtype(TORCH_DTYPE_MAP[job.training.dtype]):
        model = FluxModel(args)
    model = parallelize_precomputed_flux(model, parallel_dims, job)
    tensors = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    with tensors:
        model.to_empty(device=device)
        with torch.no_grad():
            model.init_weights(buffer_device=None)
        model.train()
        optimizers = build_optimizers([model], job.optimizer, parallel_dims)
    return BuiltStep(job, args, model, optimizers, parallel_dims, device, tensors, amp_of(parallel_dims, job, device))


def synthetic_inputs(built: BuiltStep, batch: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A batch as the loader hands it over (stored dtype, the contract's shapes) and the empty prompt."""
    args, job, device = built.args, built.job, built.device
    latent = job.training.img_size // 2 ** (len(args.autoencoder_params.ch_mult) - 1)
    moments = (batch, args.autoencoder_params.z_channels, latent, latent)
    t5 = (job.encoder.max_t5_encoding_len, args.context_in_dim)
    with torch.device(device):
        inputs = {
            contract.T5: torch.zeros((batch, *t5), dtype=torch.bfloat16),
            contract.CLIP: torch.zeros((batch, args.vec_in_dim), dtype=torch.bfloat16),
            contract.AE_MEAN: torch.zeros(moments, dtype=torch.bfloat16),
            contract.AE_LOGVAR: torch.zeros(moments, dtype=torch.bfloat16),
        }
        empty = {contract.T5: torch.zeros(t5, dtype=torch.bfloat16),
                 contract.CLIP: torch.zeros((args.vec_in_dim,), dtype=torch.bfloat16)}  # fmt: skip
    return inputs, empty


def train_step(built: BuiltStep, batch: int, timeline: MemoryTimeline | None = None) -> None:
    """``Trainer.train_step`` with ``PrecomputedFluxTrainer.forward_backward_step`` on a synthetic batch."""
    job = built.job

    def phase(name: str) -> None:
        if timeline is not None:
            timeline.phase = name

    built.optimizers.zero_grad()
    phase("forward")
    inputs, empty = synthetic_inputs(built, batch)
    generator = step_generator(job.stage2.seed, 1, 0, built.device)
    flow = flow_matching_batch(inputs, empty, built.args.autoencoder_params,
                               job.training.classifier_free_guidance_prob, generator)  # fmt: skip
    global_latents = torch.tensor(flow.target.numel() * built.parallel_dims.dp_replicate * built.parallel_dims.dp_shard, dtype=torch.float32, device=built.device)
    del inputs, empty
    with built.amp:
        prediction = built.model(**flow.model_inputs())
        loss = build_mse_loss(job)(prediction, flow.target) / global_latents
    del prediction, flow
    phase("backward")
    loss.backward()
    phase("optimizer")
    params = list(built.model.parameters())
    dist_utils.clip_grad_norm_(params, job.training.max_norm, foreach=True)
    built.optimizers.step()


def measure_step(built: BuiltStep, batch: int) -> StepMemory:
    """Peak memory by kind and collective bytes of one steady-state step (optimizer state already made)."""
    with built.tensors, compile_settings():
        if not built.optimizers.optimizers[0].state:
            # The first step differs (FSDP2's lazy init, AdamW making its state): measure later ones, the steady state.
            train_step(built, 1)
        if compiles_blocks(built.job):
            train_step(built, batch)  # compiled here, outside the timeline: it measures the compiled graphs' runs
        built.optimizers.zero_grad()
        timeline = MemoryTimeline()
        timeline.register(built.model.parameters())
        timeline.register(built.model.buffers())
        timeline.register(state_tensors(built.model, built.optimizers.optimizers)["optimizer_state"])
        with timeline:
            train_step(built, batch, timeline)
        return timeline.result(state_tensors(built.model, built.optimizers.optimizers))
