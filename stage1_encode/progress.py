"""What a task is doing, for the person watching its log and for tools reading the dataset: a progress
line every few seconds (rate, skips, ETA), heartbeats in ``<dataset>/progress/`` and a final summary."""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TextIO

from shared import heartbeat
from shared.heartbeat import Heartbeat


def slurm_job() -> str | None:
    """``<array job>_<task>`` inside an array job, the job id in a plain job, None outside Slurm."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '?')}"
    return env.get("SLURM_JOB_ID")


@dataclass(frozen=True)
class TaskResult:
    """What a task did (returned to callers: tests, the benchmark)."""

    stores_committed: int
    stores_already_there: int
    samples: int
    skipped: dict[str, int]
    seconds: float
    """The whole task, loading the encoders included."""
    encode_seconds: float
    """From the first tar to the last commit: the steady rate is ``samples / encode_seconds``."""
    drain_seconds: float
    """From the last batch queued on the GPU to the last commit: the writing nothing overlapped."""


class Progress:
    """Counts samples, skips and commits, and reports them.

    The ETA is by input bytes: the tars' sizes are known up front, their sample counts are not.
    """

    def __init__(
        self,
        dataset: Path,
        task_index: int,
        num_tasks: int,
        tar_bytes: dict[str, int],
        interval_s: float,
        out: TextIO,
    ) -> None:
        self._dataset = dataset
        self._tar_bytes = tar_bytes
        self._interval_s = interval_s
        self._out = out
        self._prefix = f"[stage1 task {task_index}/{num_tasks}]"
        self._started = time.time()
        self._last_report = self._started
        self._samples = 0
        self._last_encoded = self._started
        self._skipped: Counter[str] = Counter()
        self._already_done: set[str] = set()
        self._committed: set[str] = set()
        self._current: str | None = None
        self._heartbeat = Heartbeat(
            task_index=task_index,
            num_tasks=num_tasks,
            sources=sorted(tar_bytes),
            state="running",
            started_at=self._started,
            updated_at=self._started,
            host=socket.gethostname(),
            slurm_job=slurm_job(),
        )

    def already_done(self, store: str) -> None:
        self._already_done.add(store)

    def started(self, store: str) -> None:
        self._current = store

    def encoded(self, samples: int) -> None:
        self._samples += samples
        self._last_encoded = time.time()

    def skipped(self, reasons: Counter[str]) -> None:
        self._skipped.update(reasons)

    def committed(self, store: str) -> None:
        self._committed.add(store)

    def maybe_report(self) -> None:
        if time.time() - self._last_report >= self._interval_s:
            self.report()

    def report(self) -> None:
        now = time.time()
        self._last_report = now
        rate = self._samples / max(now - self._started, 1e-9)
        todo = len(self._tar_bytes) - len(self._already_done)
        self._print(
            f"{self._samples:,} samples ({rate:.1f}/s), {sum(self._skipped.values()):,} skipped, "
            f"stores {len(self._committed)}/{todo} this run, now {self._current or '-'}, ETA {self._eta(now)}"
        )
        self._write_heartbeat(now, "running", rate, "")

    def finish(self, state: str, message: str = "") -> None:
        """Final summary line and heartbeat (``done`` or ``failed``)."""
        now = time.time()
        elapsed = now - self._started
        rate = self._samples / max(elapsed, 1e-9)
        skips = ", ".join(f"{k}: {v}" for k, v in sorted(self._skipped.items())) or "none"
        self._print(
            f"{state}: {len(self._committed)} stores committed, {len(self._already_done)} already there, "
            f"{self._samples:,} samples, skipped {{{skips}}}, {rate:.1f} samples/s, "
            f"{timedelta(seconds=round(elapsed))}"
            + (f" ({now - self._last_encoded:.1f} s of it writing after the last batch)" if state == "done" else "")
            + (f" — {message}" if message else "")
        )
        self._write_heartbeat(now, state, rate, message)

    def result(self, seconds: float) -> TaskResult:
        now = time.time()
        return TaskResult(
            len(self._committed), len(self._already_done), self._samples, dict(self._skipped), seconds,
            now - self._started, now - self._last_encoded,
        )

    def _eta(self, now: float) -> str:
        done = sum(self._tar_bytes[s] for s in self._committed)
        left = sum(b for s, b in self._tar_bytes.items() if s not in self._committed and s not in self._already_done)
        if not done:
            return "?"
        return str(timedelta(seconds=round(left * (now - self._started) / done)))

    def _print(self, text: str) -> None:
        self._out.write(f"{self._prefix} {text}\n")
        self._out.flush()

    def _write_heartbeat(self, now: float, state: str, rate: float, message: str) -> None:
        beat = self._heartbeat
        beat.state, beat.updated_at, beat.samples_per_second, beat.message = state, now, rate, message
        beat.samples_done = self._samples
        beat.stores_done = len(self._committed | self._already_done)
        beat.current_source = self._current
        try:
            heartbeat.write_heartbeat(self._dataset, beat)
        except OSError as exc:  # heartbeats are advisory; a full disk is reported by the store writes
            self._print(f"warning: cannot write heartbeat: {exc}")
