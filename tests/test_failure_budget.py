"""The launcher's decisions from what ranks and the history recorded (no processes: the Slurm tests in
test_stage2_requeue.py run them for real): who ended a start, requeue or stop, and the history command."""

from __future__ import annotations

import signal
import subprocess
import sys

from stage2_train import history
from stage2_train.infra.failure_budget import culprit, next_move, no_progress_line, room_after_startup
from stage2_train.history import Start
from stage2_train.infra.liveness import Beat, Exit, cause, record_killed, waited
from stage2_train.infra.liveness import read as read_liveness
from stage2_train.slurm_start import decide
from test_stage2_helpers import REPO_ROOT


def _beat(rank: int, time: float, step: int = 12, silent: float = 0.0) -> Beat:
    return Beat(rank, f"n{rank + 1}", 100 + rank, time, step, 10, 1.0, interval=1.0, timeout_s=20.0, silent_s=silent)


def _waiting(rank: int) -> Exit:
    return Exit(rank, "error", 50.0, "RuntimeError: Timed out waiting 20000ms for recv operation", True, f"r{rank}.log")


def test_a_frozen_rank_is_named_not_the_rank_that_timed_out_waiting_for_it():
    beats = {0: _beat(0, 50.0), 1: _beat(1, 29.0)}  # rank 1 silent since 29 s, rank 0 beat until it gave up
    failure = culprit(beats, {0: _waiting(0)}, 1)
    assert (failure.rank, failure.host, failure.step, failure.kind) == (1, "n2", 13, "hung")
    assert failure.line().startswith("rank 1 (n2) at step 13: stopped responding (no heartbeat for 21 s")


def test_a_frozen_rank_resumed_by_the_teardown_is_named_by_its_gap_between_beats():
    beats = {0: _beat(0, 50.0), 1: _beat(1, 50.5, silent=19.0)}  # SIGCONT before SIGKILL: it beat again
    assert culprit(beats, {0: _waiting(0), 1: _waiting(1)}, 1).rank == 1


def test_a_rank_that_exited_waiting_is_not_hung_when_the_frozen_one_wakes_long_after():
    """Rank 0 timed out waiting and exited at 40 s; the frozen rank 1, woken by a slow teardown (Slurm's
    SIGCONT before SIGTERM), beat at 66 s with a 31 s gap: rank 1 is named, not the exited rank 0."""
    beats = {0: _beat(0, 40.0, silent=1.0), 1: _beat(1, 66.0, silent=31.0)}
    failure = culprit(beats, {0: _waiting(0), 1: _waiting(1)}, 1)
    assert (failure.rank, failure.kind) == (1, "hung") and "no heartbeat for 31 s" in failure.cause


def test_a_killed_rank_is_the_one_without_an_exit_record():
    beats = {0: _beat(0, 36.0), 1: _beat(1, 30.5)}  # silent only until the teardown: not a hang
    failure = culprit(beats, {0: _waiting(0)}, 1)
    assert (failure.rank, failure.kind) == (1, "killed") and "without a traceback" in failure.cause


def test_a_rank_torchrun_saw_killed_is_named_however_slow_the_teardown(tmp_path):
    """Rank 0 SIGKILLed at 30 s, the teardown slow enough that its silence looks like a hang: torchrun's
    record decides. A frozen rank's kill in the teardown (after rank 0 timed out waiting) does not."""
    record_killed(tmp_path, 0, signal.SIGKILL, 30.0)
    record_killed(tmp_path, 0, signal.SIGTERM, 31.0)  # a second record never replaces the first
    killed = read_liveness(tmp_path)[1][0]
    assert (killed.ended, killed.time) == ("killed", 30.0) and "killed by SIGKILL" in killed.cause
    failure = culprit({0: _beat(0, 30.0), 1: _beat(1, 45.0)}, {0: killed}, 1)
    assert (failure.rank, failure.kind) == (0, "killed") and failure.cause.startswith("died without a traceback")
    torn_down = Exit(1, "killed", 60.0, killed.cause)
    beats = {0: _beat(0, 50.0), 1: _beat(1, 29.0)}
    assert (culprit(beats, {0: _waiting(0), 1: torn_down}, 1).kind) == "hung"


def test_a_rank_s_own_error_wins_and_names_its_traceback():
    own = Exit(1, "error", 40.0, "OOM (OutOfMemoryError: CUDA out of memory)", False, "logs/rank_1.log")
    failure = culprit({0: _beat(0, 50.0), 1: _beat(1, 40.0)}, {0: _waiting(0), 1: own}, 1)
    assert failure.line() == "rank 1 (n2) at step 13: OOM (OutOfMemoryError: CUDA out of memory) (traceback: logs/rank_1.log)"
    assert culprit({}, {}, 7).line() == "the start before training: srun exit status 7, no rank reported (see the lines above)"


def test_exception_causes_one_line_and_whether_the_rank_only_waited():
    class OutOfMemoryError(RuntimeError):
        pass

    assert cause(OutOfMemoryError("CUDA out of memory.\nTried to allocate")) == \
        "OOM (OutOfMemoryError: CUDA out of memory.)"
    assert waited(RuntimeError("[gloo] Timed out waiting 15000ms for recv")) and not waited(ValueError("nan loss"))


def _failed(start: int, signature: str) -> Start:
    return Start("7", start, 0.0, "n[1-2]", 2, ended="failed", signature=signature)


def test_failures_requeue_within_the_budget_then_stop_and_a_repeat_stops_at_once():
    stopped = Start("7", 2, 0.0, "n[1-2]", 2, ended="stopped")  # a time-limit stop spends nothing
    assert next_move([_failed(1, "step 13: hung"), stopped, _failed(3, "step 40: killed")], 2) == \
        (True, "requeue 2 of 2 (resumes from the newest checkpoint)")
    requeue, line = next_move([_failed(1, "step 13: hung"), _failed(2, "step 20: killed"), _failed(3, "step 40: hung")], 2)
    assert not requeue and line.startswith("stop: failure budget spent (3 failures, [stage2] max_failures = 2)")
    requeue, line = next_move([_failed(1, "step 13: RuntimeError: nan"), _failed(2, "step 13: RuntimeError: nan")], 3)
    assert not requeue and line.startswith("stop: the same failure as start 1 (step 13: RuntimeError: nan): a bug")


def test_no_progress_line_and_the_room_a_start_gets():
    assert no_progress_line(32, 110, 120, 75).startswith(
        "stop: no step trained past step 32 before the time-limit signal: it came 110 s before the 120 s time limit, "
        "and this start took 75 s to reach training")
    assert room_after_startup(3600, 300, 120) == \
        (True, "--time 3600 s - signal lead 300 s - start-up 120 s leaves 3180 s of training per start")
    assert room_after_startup(900, 300, 400)[0] is False


def test_a_cancelled_job_is_not_requeued_even_after_an_agreed_stop(tmp_path):
    """scancel's SIGTERM lets the ranks stop and checkpoint; Slurm would then accept ``scontrol requeue``
    of the CANCELLED job, so the launcher never requeues after SIGTERM (nor a job shown CANCELLED)."""
    stop_file = tmp_path / "job.stop"
    (tmp_path / "job.stop.stopped").write_text("17 10\n")
    start = Start("7", 1, 0.0, "n[1-2]", 3)
    stop_file.write_text("USR1 1000\n")
    assert decide(start, [start], {"JobState": "RUNNING"}, {}, {}, 0, stop_file) == (True, 0)
    assert decide(start, [start], {"JobState": "CANCELLED"}, {}, {}, 0, stop_file) == (False, 0)
    assert (start.ended, start.detail) == ("cancelled", "job 7 was cancelled: it stays cancelled (resubmit to resume)")
    stop_file.write_text("TERM 1000\n")  # scancel as the batch shell sees it: the job still COMPLETING
    assert decide(start, [start], {"JobState": "COMPLETING"}, {}, {}, 0, stop_file) == (False, 0)
    assert start.detail.endswith("not requeueing (a cancelled job stays cancelled)")


def test_history_command_prints_every_start_and_refuses_a_folder_without_one(tmp_path):
    history.write(tmp_path, [
        Start("7", 1, 0.0, "n[1-2]", 3, "failed", 41.0, 1, 13, detail="start 1 failed: rank 1 (n2) at step 14: …"),
        Start("7", 2, 60.0, "n[1-2]", 3, "no-progress", 70.0, 11, 10, detail="stop: no step trained past step 10 …"),
    ])
    command = [sys.executable, "-m", "stage2_train.history"]
    shown = subprocess.run([*command, str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True)
    lines = shown.stdout.splitlines()
    assert shown.returncode == 0 and lines[0].split() == ["job", "start", "began", "nodes", "start-up", "steps", "ended"]
    assert "41 s" in lines[1] and "1-13" in lines[1] and lines[1].endswith("failed: start 1 failed: rank 1 (n2) at step 14: …")
    assert "none past 10" in lines[2] and "no-progress: stop: no step trained" in lines[2]
    missing = subprocess.run([*command, str(tmp_path / "nothing")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "no history.jsonl in" in missing.stderr
