"""The planner models per-block compile (``compile.enable``): blocks go through ``torch.compile`` with a
backend that partitions as Inductor does (its decompositions and joint passes, AOTAutograd's min-cut
partitioner) but generates no code, so on fake tensors the saved activations are Inductor's choice.

* A block compiled with that backend saves exactly the tensors Inductor's compiled block saves (real CPU
  tensors, bf16 autocast as the one-GPU trainer runs), and the same bytes on fake tensors.
* The planner's step with compile on keeps fewer activations live at its peak than the eager step
  (flux-tiny, one rank): dropping the compile modelling makes the two equal and fails this.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from test_stage2_helpers import parse_job_config
from torch._subclasses.fake_tensor import FakeTensorMode
from torchtitan.models.flux.model.layers import SingleStreamBlock

from stage2_train.plan.probe import fake_world, measure_mode
from stage2_train.plan.step import MIN_CUT_BACKEND, register_min_cut_backend


def saved_for_backward(backend: str, fake: bool) -> tuple[int, int]:
    """(tensors, distinct storage bytes) a compiled single-stream block saves for its backward."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    with FakeTensorMode(allow_non_fake_inputs=True) if fake else torch.device("cpu"):
        block = SingleStreamBlock(64, 2, 4.0)
        x = torch.randn(2, 96, 64, requires_grad=True)
        vec, pe = torch.randn(2, 64), torch.randn(2, 1, 96, 16, 2, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.compile(block, backend=backend, fullgraph=True)(x, vec=vec, pe=pe)
        saved = out.grad_fn.saved_tensors
        return len(saved), sum({id(t.untyped_storage()): t.untyped_storage().nbytes() for t in saved}.values())


def test_min_cut_backend_saves_what_inductor_saves():
    ours = saved_for_backward(register_min_cut_backend(), fake=False)
    assert ours[0] > 0
    assert saved_for_backward("inductor", fake=False) == ours  # Inductor's C++ codegen: ~1 min on 2 busy cores
    assert saved_for_backward(MIN_CUT_BACKEND, fake=True) == ours


def test_planner_step_with_compile_keeps_fewer_activations():
    activations = {}
    for flag in ("--compile.no-enable", "--compile.enable"):
        fake_world(1)
        try:
            job = parse_job_config(*("--parallelism.data_parallel_replicate_degree", "1", "--parallelism.data_parallel_shard_degree", "1"),
                                   "--training.mixed_precision_param", "bfloat16", flag)  # fmt: skip
            built, probes = measure_mode(job, "none", torch.device("cpu"), (2, 4))
            activations[flag] = probes[4].at_peak["activations"]
            assert (built.job.compile.backend == MIN_CUT_BACKEND) == (flag == "--compile.enable")
        finally:
            dist.destroy_process_group()
    assert 0 < activations["--compile.enable"] < 0.8 * activations["--compile.no-enable"]
