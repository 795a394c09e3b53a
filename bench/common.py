"""What every benchmark figure records: one JSON line with the device, software, commit and date.

A figure without its context cannot be compared with the next one; this keeps the context in the
same line as the number so ``bench/results/*.jsonl`` files stand on their own.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import torch

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """The commit measured: ``BENCH_COMMIT`` when the tree travelled without ``.git``, else git's HEAD."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def context(device: str | None = None) -> dict[str, Any]:
    """``device`` names it where asking CUDA would put a context in this process (the Stage 2 bench)."""
    return {
        "device": device or device_name(),
        "torch": torch.__version__,
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def emit(
    benchmark: str, figure: str, value: float | int | str | None, unit: str, out: TextIO | None = None, device: str | None = None, **extra: Any
) -> dict[str, Any]:
    """Print one figure as one JSON line (flushed, so a killed run keeps what it measured) to ``out``, else
    to the ``sys.stdout`` of the moment (not the one at import: a test's captured stream would be stale)."""
    out = out or sys.stdout
    record = {"benchmark": benchmark, "figure": figure, "value": value, "unit": unit, **extra, **context(device)}
    out.write(json.dumps(record) + "\n")
    out.flush()
    return record


@contextlib.contextmanager
def work_dir(keep: Path | None, prefix: str) -> Iterator[Path]:
    """A benchmark's scratch directory: ``keep`` (a ``--keep DIR`` to look at afterwards), else a temporary
    one removed at the end, also when the run fails."""
    work = keep or Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def run_in_workdir(benchmark: str, keep: Path | None, prefix: str, run: Callable[[Path], dict]) -> int:
    """``run(workdir)`` in ``work_dir(keep, prefix)``, then emit its figures:
    ``{"values": [(figure, value, unit), …], "context": {…}}``."""
    with work_dir(keep, prefix) as work:
        figures = run(work)
    for figure, value, unit in figures["values"]:
        emit(benchmark, figure, value, unit, **figures["context"])
    return 0
