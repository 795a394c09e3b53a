"""Whether a start that ended should be followed by another: the failure budget, a failure that
repeats, a start that made no progress. Pure functions of what the ranks and the history recorded.

* Who ended a start (``culprit``): a rank that raised its own error, or that torchrun saw killed by a
  signal before any rank timed out waiting; else a rank that hung (the longest silence between its
  heartbeats, or from its last one to the others' last ones, near the collectives' timeout); else a
  rank that left no exit record: killed with its torchrun (a lost node: no traceback); else the ranks
  that timed out waiting with no rank standing out.
* After a failure (``next_move``): requeue while the job's failures stay within ``max_failures``;
  stop when they exceed it, or when this failure is one the job already had (same step, same cause):
  a bug, not bad luck, and a requeue would only repeat it.
* A start stopped by its own time-limit signal before training a step past its checkpoint is not
  requeued (``no_progress_line``): the next start would load the same checkpoint and do the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from stage2_train.history import FAILED_ENDS, Start
from stage2_train.infra.liveness import Beat, Exit

HUNG_AFTER_BEATS = 3
"""A rank silent for this many heartbeat intervals, and for half the collectives' timeout (the others
waited that long for it; a killed rank is silent only until the teardown), was hung."""
MIN_TRAINING_S = 300
"""Preflight warns when a start would train less than this between start-up and the time-limit signal."""


@dataclass
class Failure:
    rank: int | None
    host: str
    step: int | None
    """The step the rank was in (its last finished step + 1)."""
    cause: str
    kind: str
    """hung, killed, error or waiting: with the step, what makes two failures the same."""
    log: str = ""

    def line(self) -> str:
        where = f"rank {self.rank} ({self.host})" if self.rank is not None else "the start"
        at = f" at step {self.step}" if self.step is not None else " before training"
        log = f" (traceback: {self.log})" if self.log else ""
        return f"{where}{at}: {self.cause}{log}"

    @property
    def signature(self) -> str:
        same_error = self.cause if self.kind == "error" else self.kind
        return f"step {self.step}: {same_error}" if self.step is not None else ""


def _step(beat: Beat | None) -> int | None:
    return beat.step + 1 if beat is not None and beat.step is not None else None


def culprit(beats: dict[int, Beat], exits: dict[int, Exit], srun_status: int) -> Failure:
    """The rank that ended a failed start, and why (see the module's docstring)."""
    waited_since = min((e.time for e in exits.values() if e.ended == "error" and e.waiting), default=float("inf"))
    own = [e for e in exits.values() if (e.ended == "error" and not e.waiting) or
           (e.ended == "killed" and e.time <= waited_since)]  # killed while the others waited: torn down, not first
    if own:
        first = min(own, key=lambda e: e.time)
        beat = beats.get(first.rank)
        kind = "killed" if first.ended == "killed" else "error"
        return Failure(first.rank, beat.host if beat else "?", _step(beat), first.cause, kind, first.log)
    if beats:
        hung, silence = max(((b, _silence(b, beats, exits)) for b in beats.values()), key=lambda pair: pair[1])
        if silence > max(HUNG_AFTER_BEATS * hung.interval, hung.timeout_s / 2):
            cause = f"stopped responding (no heartbeat for {silence:.0f} s while the others waited: hung or frozen)"
            return Failure(hung.rank, hung.host, _step(hung), cause, "hung")
    silent = [b for rank, b in beats.items() if rank not in exits]
    if silent:
        first = min(silent, key=lambda b: b.time)
        cause = "died without a traceback (a signal: SIGKILL, the kernel's OOM killer, or its node went down)"
        return Failure(first.rank, first.host, _step(first), cause, "killed")
    waiting = [e for e in exits.values() if e.ended == "error"]
    if waiting:
        first = min(waiting, key=lambda e: e.time)
        beat = beats.get(first.rank)
        cause = f"timed out waiting in a collective, no rank stood out ({first.cause})"
        return Failure(first.rank, beat.host if beat else "?", _step(beat), cause, "waiting", first.log)
    return Failure(None, "", None, f"srun exit status {srun_status}, no rank reported (see the lines above)", "error")


def _silence(beat: Beat, beats: dict[int, Beat], exits: dict[int, Exit]) -> float:
    """A rank's longest gap between heartbeats, or, unless it exited by itself, from its last one to the
    other ranks' last one (a rank that exited stops beating; a frozen one woken by the teardown beats later)."""
    if beat.rank in exits and exits[beat.rank].ended != "killed":
        return beat.silent_s
    newest_other = max((b.time for b in beats.values() if b.rank != beat.rank), default=beat.time)
    return max(beat.silent_s, newest_other - beat.time)


def next_move(starts: list[Start], max_failures: int) -> tuple[bool, str]:
    """After this job's last start (``starts[-1]``) failed: (requeue?, what happens next in words)."""
    failures = [s for s in starts if s.ended in FAILED_ENDS]
    last = starts[-1]
    if len(failures) > max_failures:
        return False, (f"stop: failure budget spent ({len(failures)} failures, [stage2] max_failures = {max_failures}); "
                       f"resubmit to resume from the newest checkpoint")
    same = [s for s in failures[:-1] if last.signature and s.signature == last.signature]
    if same:
        return False, (f"stop: the same failure as start {same[-1].start} ({last.signature}): a bug, not bad luck; "
                       f"fix it and resubmit")
    return True, f"requeue {len(failures)} of {max_failures} (resumes from the newest checkpoint)"


def no_progress_line(step: int, lead_s: float | None, time_limit_s: float | None, startup_s: float | None) -> str:
    """Why a start that trained nothing past ``step`` before its time-limit signal is not requeued."""
    def seconds(value: float | None) -> str:
        return f"{value:.0f} s" if value is not None else "unknown"

    return (f"stop: no step trained past step {step} before the time-limit signal: it came {seconds(lead_s)} before "
            f"the {seconds(time_limit_s)} time limit, and this start took {seconds(startup_s)} to reach training; "
            f"a requeue would do the same. Give --time more than lead + start-up + a few minutes, or a shorter "
            f"--signal=B:USR1@lead")


def room_after_startup(time_limit_s: float, lead_s: float, startup_s: float) -> tuple[bool, str]:
    """(enough?, words): the training a start gets between its start-up and the time-limit signal."""
    room = time_limit_s - lead_s - startup_s
    text = (f"--time {time_limit_s:.0f} s - signal lead {lead_s:.0f} s - start-up {startup_s:.0f} s "
            f"leaves {room:.0f} s of training per start")
    return room >= MIN_TRAINING_S, text
