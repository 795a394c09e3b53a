"""One start of a ``slurm/train.sbatch`` job, before and after ``srun``: the history, the failure budget,
one line on how the start ended and what happens next.

    python -m stage2_train.slurm_start begin --job.config_file FILE [--section.key value …]   (prints the dump folder)
    python -m stage2_train.slurm_start end DUMP_FOLDER SRUN_STATUS STOP_FILE                 (exit status of the job)

``begin`` runs at every start, also the ones Slurm requeues by itself after a lost node (the batch
shell of the lost start never ran ``end``): it counts the job's failures from the history, so the
budget holds either way, and refuses to train past it. ``end`` decides from the stop file, the ranks'
liveness files and Slurm's view of the job: a cancelled job stays cancelled (Slurm would requeue it);
a stop with progress requeues; a time-limit stop without progress ends the job; a failure requeues
within the budget. The requeued job waits Slurm's own hold (about two minutes) before it starts again:
on a real cluster that gives the lost or failed node time to be drained, and only an operator may move
a job's start earlier, so ``end`` does not shorten it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from preflight.table import OK, WARN, Row
from stage2_train import history
from stage2_train.infra import failure_budget, liveness
from stage2_train.history import Start
from stage2_train.job_config import Stage2

DEFAULT_LEAD_S = 300
"""``#SBATCH --signal=B:USR1@300`` in slurm/train.sbatch (Slurm does not show a job's --signal)."""


def say(text: str) -> None:
    print(f"flux-train: {text}", file=sys.stderr, flush=True)


def job_fields(job_id: str) -> dict[str, str]:
    """``scontrol -o show job``'s Key=Value pairs (none when Slurm cannot be asked)."""
    try:
        command = ["scontrol", "-o", "show", "job", job_id]
        out = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(part.split("=", 1) for part in out.split() if "=" in part)


def seconds_of(limit: str) -> float | None:
    """Slurm's ``[D-]HH:MM:SS`` (``UNLIMITED``: None)."""
    days, _, clock = limit.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
    except ValueError:
        return None
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def _epoch(stamp: str) -> float | None:
    try:
        return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def _this_start(environ: os._Environ | dict[str, str]) -> tuple[str, int]:
    return environ.get("SLURM_JOB_ID", "local"), int(environ.get("SLURM_RESTART_COUNT", "0")) + 1


def begin(args: list[str], environ: os._Environ | dict[str, str] = os.environ) -> int:
    from torchtitan.config import ConfigManager

    config = ConfigManager().parse_args(args)
    dump, budget = Path(config.job.dump_folder), config.stage2.max_failures
    job, start = _this_start(environ)
    starts = history.read(dump)
    for cut in [s for s in starts if s.ended == "running"]:
        cut.ended, cut.detail = "lost", "ended without a word from its batch shell (node lost or the job killed)"
        if cut.job == job:
            say(f"start {cut.start} of job {job} {cut.detail}: a failure")
    this = Start(job, start, time.time(), environ.get("SLURM_JOB_NODELIST", "local"), budget)
    starts.append(this)
    failures = sum(s.ended in history.FAILED_ENDS for s in history.of_job(starts, job))
    if failures > budget:
        this.ended = "refused"
        this.detail = f"failure budget spent ({failures} failures, [stage2] max_failures = {budget})"
        say(f"not starting: {this.detail}; resubmit to resume from the newest checkpoint")
        history.write(dump, starts)
        return 1
    history.write(dump, starts)
    liveness.clear(dump)
    say(f"start {start} of job {job} ({failures} failure(s) so far, [stage2] max_failures = {budget})")
    print(dump)
    return 0


def end(dump: Path, srun_status: int, stop_file: Path, environ: os._Environ | dict[str, str] = os.environ) -> int:
    job, start = _this_start(environ)
    starts = history.read(dump)
    this = next((s for s in reversed(starts) if (s.job, s.start) == (job, start)), None)
    if this is None:  # its line is gone (history.jsonl removed mid-run): this start's end still counts
        this = Start(job, start, time.time(), environ.get("SLURM_JOB_NODELIST", "local"), Stage2.max_failures)
        starts.append(this)
    beats, exits = liveness.read(dump)
    fields = job_fields(job)
    training = [b for b in beats.values() if b.training_since is not None]
    if training:  # start-up: from Slurm's start of this run (preflight included) to the first step boundary
        this.startup_s = max(b.training_since for b in training) - (_epoch(fields.get("StartTime", "")) or this.began)
        this.first_step = min(b.resumed_at for b in training) + 1
        this.last_step = max(b.step for b in training)
    requeue, status = decide(this, history.of_job(starts, job), fields, beats, exits, srun_status, stop_file)
    history.write(dump, starts)
    say(this.detail)
    if requeue and subprocess.run(["scontrol", "requeue", job]).returncode != 0:
        say("Slurm refused the requeue; resubmit to resume from the newest checkpoint")
    return status


def decide(this: Start, starts: list[Start], fields: dict[str, str], beats: dict, exits: dict, srun_status: int,
            stop_file: Path) -> tuple[bool, int]:
    """Fill in how ``this`` start ended; (requeue?, the job's exit status)."""
    stopped = stop_file.with_name(stop_file.name + ".stopped")
    if fields.get("JobState") == "CANCELLED":
        this.ended, this.detail = "cancelled", f"job {this.job} was cancelled: it stays cancelled (resubmit to resume)"
        return False, 0
    if stopped.exists():
        step, resumed_at = (int(v) for v in stopped.read_text().split())
        signal_name, _, sent = stop_file.read_text().strip().partition(" ")
        if signal_name == "USR1" and sent and (end_time := _epoch(fields.get("EndTime", ""))) is not None:
            this.signal_lead_s = end_time - float(sent)
        if signal_name == "USR1" and step <= resumed_at:
            this.ended = "no-progress"
            this.detail = failure_budget.no_progress_line(
                step, this.signal_lead_s, seconds_of(fields.get("TimeLimit", "")), this.startup_s)
            return False, 1
        this.ended = "stopped"
        this.detail = (f"stopped at step {step} (SIG{signal_name}), checkpoint saved; requeueing job {this.job} "
                       f"to resume at step {step + 1}")
        return True, 0
    if srun_status == 0:
        this.ended, this.detail = "completed", f"finished at step {this.last_step}"
        return False, 0
    failure = failure_budget.culprit(beats, exits, srun_status)
    this.ended, this.signature = "failed", failure.signature
    requeue, move = failure_budget.next_move(starts, this.max_failures)
    this.detail = f"start {this.start} failed: {failure.line()}; next: {move}"
    return requeue, 0 if requeue else 1


def time_limit_row(dump: Path, environ: os._Environ | dict[str, str] = os.environ) -> Row | None:
    """Preflight: does ``--time`` leave a start a few minutes of training after start-up and before the
    time-limit signal? Start-up and signal lead as the last start measured them, when there was one."""
    job = environ.get("SLURM_JOB_ID")
    limit = seconds_of(job_fields(job).get("TimeLimit", "UNLIMITED")) if job else None
    if limit is None:
        return None
    starts = history.read(dump)
    startup = next((s.startup_s for s in reversed(starts) if s.startup_s is not None), 0.0)
    # A SIGUSR1 sent by hand (scancel --signal=USR1 --batch) measures no lead: keep plausible ones only.
    leads = [s.signal_lead_s for s in starts if s.signal_lead_s is not None and s.signal_lead_s < limit / 2]
    lead = leads[-1] if leads else None
    enough, text = failure_budget.room_after_startup(limit, lead if lead is not None else DEFAULT_LEAD_S, startup)
    source = "as the last start measured" if lead is not None else "the script's default lead assumed"
    return Row("time limit", OK if enough else WARN, f"{text} ({source})")


def main(argv: list[str]) -> int:
    if argv[:1] == ["begin"]:
        return begin(argv[1:])
    if argv[:1] == ["end"] and len(argv) == 4:
        return end(Path(argv[1]), int(argv[2]), Path(argv[3]))
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
