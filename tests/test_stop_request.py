"""The stop agreement on two gloo ranks where only rank 0 can see its stop file.

In production the batch shell writes the stop file on the job's first node; ranks on other nodes can
never see it, and the all-reduce in ``StopRequest.agreed_reason`` is the only way they learn. Here
rank 1 is given a path that does not exist, as on another machine (the Slurm version of this test,
a node in its own mount namespace, is in tests/test_stage2_requeue.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

from stage2_train.infra.stop_request import StopRequest


def _rank(rank: int, root: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=2)
    stop_file = Path(root, f"node-{rank}", "flux-train.stop")
    stop_file.parent.mkdir()
    request = StopRequest(str(stop_file))
    seen = [request.agreed_reason()]
    if rank == 0:
        stop_file.write_text("USR1\n")
    dist.barrier()
    seen.append(request.agreed_reason())
    if rank == 0:
        stop_file.write_text("TERM\n")
    dist.barrier()
    seen.append(request.agreed_reason())
    request.acknowledge(7, 5)
    results[rank] = (seen, sorted(p.name for p in stop_file.parent.iterdir()))
    dist.destroy_process_group()


def test_a_stop_seen_by_rank_0_alone_stops_both_ranks(tmp_path):
    results = mp.Manager().dict()
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.spawn(_rank, args=(str(tmp_path), results), nprocs=2, join=True)
    expected = [None, "time limit (SIGUSR1)", "preemption or scancel (SIGTERM)"]
    assert results[0][0] == expected and results[1][0] == expected
    # Only the rank that sees the stop file acknowledges it (the batch shell's node reads the step).
    assert results[0][1] == ["flux-train.stop", "flux-train.stop.stopped"] and results[1][1] == []
    assert (tmp_path / "node-0" / "flux-train.stop.stopped").read_text() == "7 5\n"
