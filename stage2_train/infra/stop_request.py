"""Stop at a step boundary that every rank agrees on, with a checkpoint of that step.

Slurm warns a job before its time limit (``--signal=B:USR1@…``) and sends SIGTERM on preemption or
``scancel``. torchrun dies of SIGUSR1, so the batch shell takes the signal and writes a stop file
(``stage2.stop_file``) with the signal's name; SIGTERM that reaches a training process directly is
noted too. A rank may see the request a step before another does, so at every step boundary all
ranks all-reduce (max) what they saw — on a CPU group, so the GPU never waits for the host — and
stop together: each saves its part of the checkpoint of that step (after any asynchronous interval
save still writing has finished), the ranks that can see the stop file write ``<stop_file>.stopped``
holding the step (and the step they resumed at), and the batch shell requeues the job unless the
start trained nothing (``slurm_start``).
"""

from __future__ import annotations

import atexit
import multiprocessing
import signal
from pathlib import Path

import torch
import torch.distributed as dist
from torchtitan.components.checkpoint import AsyncMode, CheckpointManager

from shared.atomic import atomic_write

REASONS = {1: "time limit (SIGUSR1)", 2: "preemption or scancel (SIGTERM)"}
"""Stop codes, larger wins when ranks disagree; a stop file holding neither signal name reads as 1."""


def ignore_sigterm(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: torchrun and Slurm signal whole process groups, and a worker dying
    of SIGTERM would fail its rank before the agreed stop; the loader ends its workers itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _kill_daemonic_children() -> None:
    """At interpreter exit multiprocessing terminates daemonic children (SIGTERM) and then joins them:
    workers that ignore SIGTERM, still alive because a loader's iterator was never closed, would keep
    the process from exiting. End them first (atexit runs this before multiprocessing's own hook)."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


atexit.register(_kill_daemonic_children)


class StopRequest:
    """Whether this run was asked to stop, as every rank agrees it at a step boundary."""

    def __init__(self, stop_file: str) -> None:
        self.stop_file = Path(stop_file) if stop_file else None
        self.sigterm = False
        signal.signal(signal.SIGTERM, self._on_sigterm)
        backend = dist.get_backend()
        # NCCL would make the host wait for the GPU at every step; a gloo group keeps the check on the CPU.
        self.group = None if backend == "gloo" else dist.new_group(backend="gloo")

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.sigterm = True

    def _local_code(self) -> int:
        if self.sigterm:
            return 2
        if self.stop_file is not None and self.stop_file.exists():
            return 2 if "TERM" in self.stop_file.read_text() else 1
        return 0

    def agreed_reason(self) -> str | None:
        """Collective: the reason to stop now if any rank saw one, else ``None`` (every rank must call)."""
        code = torch.tensor([self._local_code()], dtype=torch.int32)
        dist.all_reduce(code, op=dist.ReduceOp.MAX, group=self.group)
        return REASONS.get(int(code.item()))

    def acknowledge(self, step: int, resumed_at: int) -> None:
        """Tell the batch shell (which can see the stop file) that the ranks stop at ``step`` (checkpointed)
        and resumed at ``resumed_at``: equal, this start trained nothing (``slurm_start end`` then stops)."""
        if self.stop_file is None or not self.stop_file.exists():
            return
        done = self.stop_file.with_name(self.stop_file.name + ".stopped")
        atomic_write(done, f"{step} {resumed_at}\n")


def wait_for_pending_save(checkpointer: CheckpointManager) -> None:
    """Block until an asynchronous save in flight (``[checkpoint] async_mode``) is on disk. The process
    exits hard after a stop (``launch.py``): a save still writing in the background would be cut off,
    leaving its step without ``.metadata`` while the batch shell reports it saved."""
    checkpointer._async_wait()
    checkpointer.save_future = None  # TorchTitan keeps the pinned-memory mode's finished future


def checkpoint_now(checkpointer: CheckpointManager, step: int) -> None:
    """A full checkpoint of ``step``, complete on disk when this returns (collective). A pending
    asynchronous save finishes first; this one is synchronous whatever ``async_mode`` says (an async
    save that is waited for at once only adds staging copies). ``CheckpointManager.save`` saves full
    state only on interval steps (its last-step save may be weights only), and any step is a multiple
    of itself."""
    wait_for_pending_save(checkpointer)
    interval, mode = checkpointer.interval, checkpointer.async_mode
    checkpointer.interval, checkpointer.async_mode = step, AsyncMode.DISABLED
    try:
        checkpointer.save(step)
    finally:
        checkpointer.interval, checkpointer.async_mode = interval, mode
