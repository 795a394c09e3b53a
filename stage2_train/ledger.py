"""Per-rank record of what each step trained on: sample indices and this rank's share of the loss.

One JSON line per step, flushed at once, so a killed job leaves every step it finished. After a
resume, steps between the last checkpoint and the kill appear twice; the later record is the one
the resumed run trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


class SampleLedger:
    def __init__(self, folder: str | Path, rank: int) -> None:
        self.path = Path(folder) / f"rank_{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, step: int, samples: torch.Tensor, loss: torch.Tensor) -> None:
        line = json.dumps({"step": step, "samples": samples.tolist(), "loss": loss.item()})
        with self.path.open("a") as f:
            f.write(line + "\n")


def read_ledger(path: str | Path) -> dict[int, dict]:
    """Step -> its last record (the one that counts after a resume)."""
    records = (json.loads(line) for line in Path(path).read_text().splitlines())
    return {record["step"]: record for record in records}
