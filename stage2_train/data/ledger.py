"""Per-rank record of what each step trained on: sample indices and this rank's share of the loss.

One JSON line per micro-batch (one per step without gradient accumulation), flushed at once, so a
killed job leaves every micro-batch it finished. After a resume, steps between the last checkpoint and
the kill appear twice; the later records are the ones the resumed run trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


class SampleLedger:
    def __init__(self, folder: str | Path, rank: int) -> None:
        self.path = Path(folder) / f"rank_{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, step: int, samples: torch.Tensor, loss: torch.Tensor, micro_batch: int = 0) -> None:
        line = json.dumps({"step": step, "micro_batch": micro_batch, "samples": samples.tolist(), "loss": loss.item()})
        with self.path.open("a") as f:
            f.write(line + "\n")


def read_ledger(path: str | Path) -> dict[int, dict]:
    """Step -> what its last run trained (the one that counts after a resume): the samples of all its
    micro-batches in order, the sum of their losses and how many there were. Micro-batch 0 starts a
    step's record afresh."""
    steps: dict[int, dict] = {}
    for record in map(json.loads, Path(path).read_text().splitlines()):
        micro_batch = record.get("micro_batch", 0)  # ledgers written before accumulation had one line per step
        if micro_batch == 0:
            steps[record["step"]] = {"step": record["step"], "samples": [], "loss": 0.0, "micro_batches": 0}
        step = steps[record["step"]]
        step["samples"] += record["samples"]
        step["loss"] += record["loss"]
        step["micro_batches"] += 1
    return steps
