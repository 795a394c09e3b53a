"""The job history: one line per start of a training job in ``<dump_folder>/history.jsonl``.

    python -m stage2_train.history DUMP_FOLDER

``slurm_start begin`` appends a start's line (``ended: running``) before ``srun``; ``slurm_start end``
rewrites it with how the start ended. A line still ``running`` when the next start of the same job
begins was cut off without its batch shell (a lost node, a killed job): that start reads it as a
failure (``lost``). The failure budget counts from this file, so it holds across Slurm's own requeues.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from shared.atomic import atomic_write


FILE = "history.jsonl"
FAILED_ENDS = ("failed", "lost")
"""Ends that spend the failure budget (a time-limit stop, a preemption or a cancel does not)."""


@dataclass
class Start:
    job: str
    start: int
    """1 for the job's first start, then one more per requeue (Slurm's restart count + 1)."""
    began: float
    nodes: str
    max_failures: int
    ended: str = "running"
    """running, completed, stopped, no-progress, failed, lost, cancelled or refused."""
    startup_s: float | None = None
    """From Slurm's start of this run to the first step boundary (preflight, checkpoint load included)."""
    first_step: int | None = None
    last_step: int | None = None
    signal_lead_s: float | None = None
    """Measured: the time-limit signal's arrival to the job's end time."""
    detail: str = ""
    """The launcher's one line on how it ended."""
    signature: str = ""
    """A failure's rank-free identity (step and cause), to spot the same failure repeating."""

    @classmethod
    def from_dict(cls, data: dict) -> Start:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read(dump_folder: str | os.PathLike) -> list[Start]:
    path = Path(dump_folder) / FILE
    if not path.exists():
        return []
    return [Start.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def write(dump_folder: str | os.PathLike, starts: list[Start]) -> None:
    """The whole file, replaced atomically (it stays small: one line per start)."""
    Path(dump_folder).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(dump_folder) / FILE, "".join(json.dumps(asdict(s)) + "\n" for s in starts))


def of_job(starts: list[Start], job: str) -> list[Start]:
    return [s for s in starts if s.job == job]


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _steps(s: Start) -> str:
    if s.first_step is None or s.last_step is None:
        return "-"
    return f"{s.first_step}-{s.last_step}" if s.last_step >= s.first_step else f"none past {s.last_step}"


def render(starts: list[Start]) -> str:
    rows = [("job", "start", "began", "nodes", "start-up", "steps", "ended")]
    for s in starts:
        steps = _steps(s)
        startup = f"{s.startup_s:.0f} s" if s.startup_s is not None else "-"
        rows.append((s.job, str(s.start), _when(s.began), s.nodes, startup, steps, f"{s.ended}: {s.detail}".rstrip(": ")))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[6] for r in rows)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m stage2_train.history DUMP_FOLDER  (prints every start of the jobs that trained there)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    folder = Path(argv[0])
    if not (folder / FILE).exists():
        print(f"stage2_train.history: error: no {FILE} in {folder} (a job started by slurm/train.sbatch writes it)",
              file=sys.stderr)
        return 1
    print(render(read(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
