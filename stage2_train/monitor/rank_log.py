"""Every rank's peak memory and step time, one JSON line per log step in ``<dump_folder>/ranks/rank-<N>.jsonl``.

TorchTitan's metrics come from one rank, and its memory figures are the caching allocator's *reserved*
and *active* bytes. A memory planner predicts what tensors need, i.e. peak *allocated* bytes
(``torch.cuda.max_memory_allocated``), and ranks differ (uneven shards, the logging rank's extra work),
so each rank keeps its own record beside the checkpoints, where a calibration reads it after the job.
Peaks cover the steps since the previous log step (TorchTitan resets them at each); ``step_seconds`` is
their mean step time. On CPU there is no allocator: the device figures are null and
``peak_host_rss_gib`` (the process's peak resident memory since it started) is what there is; on a GPU
it shows the host memory that asynchronous checkpoint staging takes.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

import torch

GIB = 2**30


def rank_record(step: int, step_seconds: float) -> dict[str, Any]:
    """This process's figures now; read them before TorchTitan resets the device peaks."""
    cuda = torch.cuda.is_available()
    return {
        "step": step,
        "step_seconds": round(step_seconds, 6),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 4) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 4) if cuda else None,
        "peak_host_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 4),  # Linux: KiB
    }


class RankLog:
    """Appends this rank's records, flushed per line: a killed job keeps what it logged."""

    def __init__(self, dump_folder: str, rank: int) -> None:
        self.path = Path(dump_folder) / "ranks" / f"rank-{rank}.jsonl"
        os.makedirs(self.path.parent, exist_ok=True)

    def append(self, step: int, step_seconds: float) -> dict[str, Any]:
        record = rank_record(step, step_seconds)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        return record


def read_rank_logs(dump_folder: Path) -> dict[int, list[dict[str, Any]]]:
    """Every rank's records of a run (appended across its restarts), by rank."""
    return {
        int(path.stem.removeprefix("rank-")): [json.loads(line) for line in path.read_text().splitlines() if line]
        for path in sorted((Path(dump_folder) / "ranks").glob("rank-*.jsonl"))
    }
