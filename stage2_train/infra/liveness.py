"""Per-rank liveness: a heartbeat file per rank, and how each rank ended, for the launcher to read.

A collective timeout is raised by the rank that was *waiting*, not by the one that hung; a rank killed
by SIGKILL or the OOM killer leaves no traceback at all. So every rank keeps
``<dump_folder>/liveness/rank_<r>.json`` fresh from a daemon thread (a frozen process stops beating; one
blocked in a collective keeps beating, gloo and NCCL release the GIL while they wait) with the last step
it finished, and on the way out writes ``rank_<r>.exit.json`` (done, or the exception's one line) and its
traceback at the end of its full log, ``<dump_folder>/logs/<start>/rank_<r>.log``; a rank killed by a
signal gets its record from torchrun's wrapper (``record_killed``). ``slurm_start end`` reads them after
``srun`` returns and names the rank that ended the start (``failure_budget.culprit``). No torch import:
the launcher reads these files in a process that must start in a second.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.atomic import atomic_write

FOLDER = "liveness"
"""Under ``job.dump_folder``; ``slurm_start begin`` empties it at every start."""
_current: "Liveness | None" = None


@dataclass
class Beat:
    rank: int
    host: str
    pid: int
    time: float
    """Wall-clock seconds of the last beat."""
    step: int | None = None
    """The last step this rank finished (``None``: not training yet)."""
    resumed_at: int | None = None
    """The step the loaded checkpoint held (0: a fresh start)."""
    training_since: float | None = None
    """Wall-clock seconds when this rank reached its first step boundary (start-up done)."""
    interval: float = 5.0
    """Seconds between beats."""
    timeout_s: float = 600.0
    """``[comm] train_timeout_seconds``: how long the other ranks wait for a hung one."""
    silent_s: float = 0.0
    """The longest time between two beats since training began: a process frozen (SIGSTOP, a stall
    holding the GIL) and later resumed shows it here, even though it beats again before it dies."""


@dataclass
class Exit:
    rank: int
    ended: str
    """``done`` (returned normally), ``error`` (raised), or ``killed`` (a signal; written by torchrun's
    wrapper, ``record_killed``: the rank itself could not)."""
    time: float = 0.0
    cause: str = ""
    """The exception's type and first line of its message."""
    waiting: bool = False
    """The exception came from a collective (a timeout or a lost peer): this rank waited for another."""
    log: str = ""
    """Where its traceback went."""


def start_label(environ: os._Environ | dict[str, str] = os.environ) -> str:
    """``job-<J>-start-<n>`` under Slurm (one folder of rank logs per start), else ``local``."""
    job = environ.get("SLURM_JOB_ID")
    return f"job-{job}-start-{int(environ.get('SLURM_RESTART_COUNT', '0')) + 1}" if job else "local"


def rank_log(dump_folder: str | os.PathLike, rank: int) -> Path:
    """This rank's full log for this start: every record (third-party ones too), a traceback at the end."""
    return Path(dump_folder) / "logs" / start_label() / f"rank_{rank}.log"


class Liveness:
    """This rank's heartbeat (a daemon thread) and exit record."""

    def __init__(self, dump_folder: str | os.PathLike, rank: int, interval: float, timeout: float) -> None:
        if interval <= 0:
            raise ValueError(f"[stage2] liveness_interval_seconds must be > 0, not {interval}")
        self.folder = Path(dump_folder) / FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log = rank_log(dump_folder, rank)
        host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        self.beat = Beat(rank, host, os.getpid(), time.time(), interval=interval, timeout_s=timeout)
        self._lock = threading.Lock()
        self._write()
        threading.Thread(target=self._run, name="liveness", daemon=True).start()
        global _current
        _current = self

    def at_step(self, step: int) -> None:
        """Main thread, at every step boundary: ``step`` is the last finished one."""
        with self._lock:
            if self.beat.resumed_at is None:
                self.beat.resumed_at, self.beat.training_since = step, time.time()
            self.beat.step = step
        self._write()

    def ended(self, exc: BaseException | None = None) -> None:
        """Record how this rank ends; an exception's traceback goes to the rank's log, not the job's."""
        record = Exit(self.beat.rank, "done", time.time())
        if exc is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "a") as out:
                out.write("".join(traceback.format_exception(exc)))
            record = Exit(self.beat.rank, "error", time.time(), cause(exc), waited(exc), str(self.log))
        atomic_write(self.folder / f"rank_{self.beat.rank}.exit.json", json.dumps(asdict(record)) + "\n")

    def _write(self) -> None:
        with self._lock:
            self.beat.time = time.time()
            data = asdict(self.beat)
        atomic_write(self.folder / f"rank_{self.beat.rank}.json", json.dumps(data) + "\n")

    def _run(self) -> None:
        while True:
            time.sleep(self.beat.interval)
            with self._lock:
                if self.beat.training_since is not None:
                    self.beat.silent_s = max(self.beat.silent_s, time.time() - self.beat.time)
            try:
                self._write()
            except OSError:  # a full or unreachable disk must not end training; the launcher sees the gap
                pass


def cause(exc: BaseException) -> str:
    """One line: the exception's type and the first line of its message; ``OOM`` first when it is one."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return f"OOM ({text})" if "OutOfMemoryError" in _type_names(exc) else text


def waited(exc: BaseException) -> bool:
    """A collective's error (timeout, a peer gone): torch's ``DistError`` family, or gloo/NCCL's own text."""
    text = str(exc)
    return bool({"DistError", "DistBackendError", "DistNetworkError"} & _type_names(exc)) or any(
        mark in text for mark in ("Timed out waiting", "Connection closed by peer", "Connection reset by peer", "NCCL")
    )


def _type_names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}  # no torch import here (see the module's docstring)


def record_killed(dump_folder: str | os.PathLike, rank: int, signal_number: int, when: float) -> None:
    """torchrun saw ``rank`` die of a signal at ``when``: the exit record the rank could not write."""
    path = Path(dump_folder) / FOLDER / f"rank_{rank}.exit.json"
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        name = signal.Signals(signal_number).name
    except ValueError:
        name = f"signal {signal_number}"
    cause = f"died without a traceback (killed by {name}: by hand, or the kernel's OOM killer)"
    atomic_write(path, json.dumps(asdict(Exit(rank, "killed", when, cause))) + "\n")


def current() -> Liveness | None:
    """This process's liveness, once the trainer has started it."""
    return _current


def read(dump_folder: str | os.PathLike) -> tuple[dict[int, Beat], dict[int, Exit]]:
    """Every rank's last beat and exit record, by global rank (what a start left behind)."""
    folder = Path(dump_folder) / FOLDER
    beats: dict[int, Beat] = {}
    exits: dict[int, Exit] = {}
    for path in folder.glob("rank_*.json") if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if path.name.endswith(".exit.json"):
            exits[data["rank"]] = Exit(**data)
        else:
            beats[data["rank"]] = Beat(**data)
    return beats, exits


def clear(dump_folder: str | os.PathLike) -> None:
    """A new start: the last start's files would otherwise read as this one's."""
    folder = Path(dump_folder) / FOLDER
    for path in folder.glob("*") if folder.is_dir() else []:
        path.unlink(missing_ok=True)
