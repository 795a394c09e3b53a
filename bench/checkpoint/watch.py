"""What the benchmark does beside a running trainer: free the disk of each finished interval checkpoint
and, once the last one is on disk, ask the trainer to stop as ``slurm/train.sbatch`` does on SIGUSR1
(it writes the stop file), timing the request to the trainer's acknowledgement (``<stop_file>.stopped``,
written after the stop checkpoint is complete on disk)."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path

from bench.stage2.runs import read_records

POLL_S = 0.02


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@dataclasses.dataclass
class StopTiming:
    step: int | None = None
    """The step the trainer stopped at and checkpointed; ``None``: it never acknowledged."""
    seconds: float | None = None
    """From the stop file's appearance to the acknowledgement."""
    requested_after_step: int | None = None
    """The newest logged step when the stop was requested."""
    interval_bytes: dict[int, int] = dataclasses.field(default_factory=dict)
    """Each interval checkpoint's size, measured before it was deleted."""


class Watcher(threading.Thread):
    """Polls the trainer's dump folder until it acknowledges the stop (or ``finish`` is called)."""

    def __init__(self, dump: Path, stop_file: Path, last_interval_step: int, stop_after_step: int) -> None:
        super().__init__(daemon=True)
        self.dump, self.stop_file = dump, stop_file
        self.last_interval_step, self.stop_after_step = last_interval_step, stop_after_step
        self.timing = StopTiming()
        self._done = threading.Event()

    def finish(self) -> StopTiming:
        self._done.set()
        self.join()
        return self.timing

    def run(self) -> None:
        requested_at = None
        stopped = self.stop_file.with_name(self.stop_file.name + ".stopped")
        while not self._done.is_set():
            self._free_interval_checkpoints()
            if requested_at is None and self._ready_to_stop():
                self.timing.requested_after_step = self._last_step()
                partial = self.stop_file.with_name("." + self.stop_file.name)
                partial.write_text("USR1\n")
                partial.replace(self.stop_file)  # appears whole, as the batch shell's echo does at once
                requested_at = time.monotonic()
            if requested_at is not None and stopped.exists() and stopped.read_text().strip():
                self.timing.seconds = time.monotonic() - requested_at
                self.timing.step = int(stopped.read_text().split()[0])  # "<stop step> <resumed at>"
                return
            time.sleep(POLL_S)

    def _last_step(self) -> int:
        return max((r["step"] for r in read_records(self.dump / "metrics.jsonl")), default=0)

    def _ready_to_stop(self) -> bool:
        return self._last_step() >= self.stop_after_step and self.last_interval_step in self.timing.interval_bytes

    def _free_interval_checkpoints(self) -> None:
        """A checkpoint is complete once DCP wrote its ``.metadata`` (last); only one is on disk at a time."""
        for metadata in (self.dump / "checkpoint").glob("step-*/.metadata"):
            step = int(metadata.parent.name.removeprefix("step-"))
            if step <= self.last_interval_step and step not in self.timing.interval_bytes:
                self.timing.interval_bytes[step] = checkpoint_bytes(metadata.parent)
                shutil.rmtree(metadata.parent)
