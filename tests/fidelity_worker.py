"""torchrun entry of the world-size-2 fidelity test:
``fidelity_worker.py TARS DATASET ASSETS WORKDIR OUT BATCH THREADS``.

Each rank compares Stage 2's step with TorchTitan's online step on its own ``BATCH`` samples (gloo,
data-parallel degree 2) and rank 0 writes every rank's outcome to OUT as JSON for the test to assert.
Each rank computes with THREADS threads, those Stage 1 encoded with: CPU kernels block their sums by
thread count, and only the same kernels reproduce the stored encodings bit for bit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from fidelity import comparable_samples, compare_step
from torchtitan.distributed import ParallelDims

from stage2_train.infra.device import use_cpu_if_no_cuda


def main(tars: str, root: str, assets: str, workdir: str, out: str, batch: str, threads: str) -> None:
    torch.set_num_threads(int(threads))
    use_cpu_if_no_cuda()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dims = ParallelDims(dp_replicate=1, dp_shard=world, cp=1, tp=1, pp=1, ep=1, etp=1, world_size=world)
    dims.build_mesh()
    per_rank = int(batch)
    _, _, _, usable = comparable_samples(Path(tars), Path(root))
    samples = usable[rank * per_rank : (rank + 1) * per_rank]
    own = Path(workdir) / f"rank{rank}"
    own.mkdir()
    result = compare_step(Path(tars), Path(root), Path(assets), own, samples, rank=rank, parallel_dims=dims)
    outcome = {
        "rank": rank,
        "samples": samples,
        "our_loss": result.our_loss.item(),
        "online_loss": result.online_loss.item(),
        "loss_equal": result.loss_equal,
        "grads_equal": result.grads_equal,
        "t5_dropped": result.t5_dropped,
        "clip_dropped": result.clip_dropped,
    }
    gathered: list[dict] = [{}] * world
    dist.all_gather_object(gathered, outcome)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
