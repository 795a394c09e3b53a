"""What a task is doing, for the person watching its log and for tools reading the dataset: a progress
line every few seconds (rate, skips, ETA), heartbeats in ``<dataset>/progress/`` and a final summary."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from shared import heartbeat
from shared.contract import StoreAttrs
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
    damaged_sources: list[str] = field(default_factory=list)
    """One line per source tar that broke off (its store holds the whole samples before the cut)."""


class Progress:
    """Counts samples, skips and commits, and reports them.

    The ETA is by input bytes: the tars' sizes are known up front, their sample counts are not. The
    feeders say how far into each tar they have read, which gives bytes per input sample; samples
    encoded or skipped times that is the share done, so an ETA exists from the first batch on.
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
        self._damaged: dict[str, str] = {}
        self._bytes_read: dict[str, int] = {}
        self._inputs_read = 0
        self._current: str | None = None
        self._finished = False
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

    def starting(self) -> None:
        """The first heartbeat, before the encoders load (minutes for T5-XXL)."""
        self._write_heartbeat(time.time(), "starting", 0.0, "loading the encoders")

    def already_done(self, store: str, attrs: StoreAttrs | None) -> None:
        self._already_done.add(store)
        self._note_damage(store, attrs)

    def source_changed(self, store: str) -> None:
        self._print(f"{store}: its source tar changed since the store was made; encoding it again")

    def read(self, store: str, end_byte: int) -> None:
        """A feeder has read one more input sample of ``store``'s tar, up to ``end_byte``."""
        self._bytes_read[store] = end_byte
        self._inputs_read += 1

    def started(self, store: str) -> None:
        self._current = store

    def encoded(self, samples: int) -> None:
        self._samples += samples
        self._last_encoded = time.time()

    def skipped(self, reasons: Counter[str]) -> None:
        self._skipped.update(reasons)

    def committed(self, store: str, attrs: StoreAttrs) -> None:
        self._committed.add(store)
        self._note_damage(store, attrs)

    def _note_damage(self, store: str, attrs: StoreAttrs | None) -> None:
        if attrs is not None and attrs.truncated_at_byte is not None:
            self._damaged[store] = (
                f"damaged source: {attrs.source} cut at byte {attrs.truncated_at_byte:,} after "
                f"{attrs.samples_read:,} samples; {store} holds the {attrs.num_samples:,} usable ones. "
                f"Replace the tar with a whole copy and rerun: a store whose source changed is encoded again."
            )

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

    @contextlib.contextmanager
    def failed_on_error(self) -> Iterator[None]:
        """A task that dies before its final heartbeat (loading the encoders, a worker lost while starting)
        says so: ``failed`` with the error, never a ``starting`` left behind for ``inspect_shards``."""
        try:
            yield
        except BaseException as exc:
            if not self._finished:
                self.finish("failed", f"{type(exc).__name__}: {exc}")
            raise

    def finish(self, state: str, message: str = "") -> None:
        """Final summary line and heartbeat (``done`` or ``failed``)."""
        self._finished = True
        now = time.time()
        elapsed = now - self._started
        rate = self._samples / max(elapsed, 1e-9)
        skips = ", ".join(f"{k}: {v}" for k, v in sorted(self._skipped.items())) or "none"
        for line in self._damaged.values():
            self._print(line)
        damaged = f", {len(self._damaged)} damaged source{'s' if len(self._damaged) != 1 else ''}" if self._damaged else ""
        self._print(
            f"{state}: {len(self._committed)} stores committed, {len(self._already_done)} already there{damaged}, "
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
            now - self._started, now - self._last_encoded, list(self._damaged.values()),
        )

    def _eta(self, now: float) -> str:
        """Time left for this run's share of input bytes at the rate so far; ``?`` until a batch is done."""
        inputs_done = self._samples + sum(self._skipped.values())
        if not (inputs_done and self._inputs_read):
            return "?"
        bytes_per_input = sum(self._bytes_read.values()) / self._inputs_read
        done = inputs_done * bytes_per_input
        total = sum(b for s, b in self._tar_bytes.items() if s not in self._already_done)
        return str(timedelta(seconds=round(max(total - done, 0) * (now - self._started) / done)))

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
