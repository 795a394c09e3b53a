"""One start of a ``slurm/train.sbatch`` job, before and after ``srun``: the history, the failure budget,
one line on how the start ended and what happens next.

    python -m stage2_train.slurm_start begin --job.config_file FILE [--section.key value …]   (prints the dump folder)
    python -m stage2_train.slurm_start end DUMP_FOLDER SRUN_STATUS STOP_FILE                 (exit status of the job)

``begin`` prints Stage 2's preflight table first (one process, one torch import per start) and runs at
every start, also the ones Slurm requeues by itself after a lost node (the batch
shell of the lost start never ran ``end``): it counts the job's failures from the history, so the
budget holds either way, and refuses to train past it. ``end`` decides from the stop file, the ranks'
liveness files and Slurm's view of the job: a cancelled job stays cancelled (Slurm would requeue it, and while the
batch shell runs it shows the job COMPLETING, not CANCELLED: so a SIGTERM stop is never requeued here;
Slurm requeues a preempted job itself); a time-limit stop with progress requeues; a time-limit stop without progress ends the job; a failure requeues
within the budget. The requeued job waits Slurm's own hold (about two minutes) before it starts again,
which lets the nodes' epilogs finish and a failed node be drained first; ``end`` could not shorten it
anyway (``scontrol update StartTime=now`` is refused until the job is PENDING, and it stays COMPLETING
while this batch shell runs), only something outside the job could.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from stage2_train import history
from stage2_train.infra import failure_budget, liveness
from stage2_train.infra.slurm_job import epoch, job_fields, seconds_of
from stage2_train.history import Start
from stage2_train.job_config import Stage2

def say(text: str) -> None:
    print(f"flux-train: {text}", file=sys.stderr, flush=True)


def _this_start(environ: os._Environ | dict[str, str]) -> tuple[str, int]:
    return environ.get("SLURM_JOB_ID", "local"), int(environ.get("SLURM_RESTART_COUNT", "0")) + 1


def begin(args: list[str], environ: os._Environ | dict[str, str] = os.environ) -> int:
    """Stage 2's preflight table (to stderr), then count the job's failures (a start cut off without its
    end counts), refuse past the budget, else append this start's line and print the dump folder.
    0: train; 1: preflight FAIL or refused; 2: a bad argument or setting. One process for both: each
    start pays torch's import once (tens of seconds on a loaded node)."""
    from torchtitan.config import ConfigManager  # only here: ``end`` runs without torch, in a second

    from stage2_train import preflight

    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the dump folder to the batch shell
        try:
            status = preflight.main(args)
        except SystemExit as exc:  # an argument the trainer would refuse (argparse's own message)
            status = exc.code if isinstance(exc.code, int) else 2
    if status:
        return status
    config = ConfigManager().parse_args(args)
    dump, budget = Path(config.job.dump_folder), config.stage2.max_failures
    if budget < 0 or config.stage2.liveness_interval_seconds <= 0:
        say("error: [stage2] max_failures must be >= 0 and liveness_interval_seconds > 0")
        return 2
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
    """Record how this start ended, say it in one line with what happens next, requeue when it should;
    the job's exit status."""
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
        this.startup_s = max(b.training_since for b in training) - (epoch(fields.get("StartTime", "")) or this.began)
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
        if signal_name == "USR1" and sent and (end_time := epoch(fields.get("EndTime", ""))) is not None:
            this.signal_lead_s = end_time - float(sent)
        if signal_name == "USR1" and step <= resumed_at:
            this.ended = "no-progress"
            this.detail = failure_budget.no_progress_line(
                step, this.signal_lead_s, seconds_of(fields.get("TimeLimit", "")), this.startup_s)
            return False, 1
        this.ended = "stopped"
        if signal_name == "TERM":  # scancel or preemption: Slurm decides (it requeues a preempted job itself)
            this.detail = (f"stopped at step {step} (SIGTERM: scancel or preemption), checkpoint saved; not "
                           f"requeueing (a cancelled job stays cancelled)")
            return False, 0
        this.detail = (f"stopped at step {step} (SIG{signal_name}), checkpoint saved; requeueing job {this.job} "
                       f"to resume at step {step + 1} (Slurm holds a requeued job PENDING for about 2 minutes "
                       f"before it starts again)")
        return True, 0
    if srun_status == 0:
        this.ended, this.detail = "completed", f"finished at step {this.last_step}"
        return False, 0
    failure = failure_budget.culprit(beats, exits, srun_status)
    this.ended, this.signature = "failed", failure.signature
    requeue, move = failure_budget.next_move(starts, this.max_failures)
    this.detail = f"start {this.start} failed: {failure.line()}; next: {move}"
    return requeue, 0 if requeue else 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["begin"]:
        return begin(argv[1:])
    if argv[:1] == ["end"] and len(argv) == 4:
        return end(Path(argv[1]), int(argv[2]), Path(argv[3]))
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
