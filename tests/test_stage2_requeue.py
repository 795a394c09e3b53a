"""Stage 2 under Slurm's time limits, requeues and resizes, on the real local 2-node cluster (and
SIGTERM straight to torchrun, as preemption delivers it).

``scancel --signal=USR1 --batch`` is what ``#SBATCH --signal=B:USR1@300`` delivers before the time
limit. Checkpoints come only from those stops and the last step (the interval is beyond the run), so
every stop checkpoints a step off the interval. The uninterrupted reference is the same 2-rank
layout (replicate 2 x shard 1) under torchrun. Failures (a rank frozen with SIGSTOP or killed with
SIGKILL) requeue the job within its failure budget; ``requeue_now`` skips Slurm's ~120 s hold.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from slurm_helpers import TERMINAL_STATES
from test_stage2_helpers import REPO_ROOT, TINY_CONFIG, run_stage2, torchrun_command, torchrun_env, write_tiny_dataset

from stage2_train.data.ledger import read_ledger

STEPS = 36
SAMPLES = 16  # local batch 2 on 2 ranks: 4 steps an epoch
COMMON = ("--training.local_batch_size", "2", "--stage2.sample_ledger", "--checkpoint.enable",
          "--checkpoint.interval", "1000")
REPLICATE_2 = ("--parallelism.data_parallel_replicate_degree", "2", "--parallelism.data_parallel_shard_degree", "1")
TRAIN_SBATCH = REPO_ROOT / "slurm" / "train.sbatch"
TRAIN_TIMEOUT = 15
REQUEUE_MARGIN = 45
"""Seconds from the collectives' timeout to the requeue: gloo raising, torchrun and srun tearing the
step down (KillWait), the launcher's line; measured on the loaded 2-core test machine."""
FAILURES = ("--checkpoint.interval", "5", "--comm.train_timeout_seconds", str(TRAIN_TIMEOUT),
            "--stage2.liveness_interval_seconds", "2")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("requeue") / "ds", stores=2, samples_per_store=8)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> list[dict[int, dict]]:
    """Each rank's ledger of an uninterrupted run."""
    dump = tmp_path_factory.mktemp("reference")
    result = run_stage2(2, dataset, dump, *COMMON, *REPLICATE_2, "--training.steps", str(STEPS))
    assert result.returncode == 0, result.stderr[-4000:]
    return [read_ledger(dump / "ledger" / f"rank_{rank}.jsonl") for rank in range(2)]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _submit(slurm_cluster, dataset: Path, dump: Path, log: Path, steps: int, nodes: int = 2, extra=(), sbatch_extra=()):
    return slurm_cluster.submit(
        TRAIN_SBATCH,
        *("--job.config_file", TINY_CONFIG, "--training.dataset_path", dataset, "--job.dump_folder", dump),
        *COMMON, "--training.steps", str(steps), *extra,
        sbatch_opts=["--output", str(log), "--nodes", str(nodes), *sbatch_extra],
        # The stop file goes to $TMPDIR on the batch shell's node, n1: n2's ranks cannot see it there. The
        # directory is this cluster's own (concurrent local clusters all number jobs from 1).
        env_extra={"NPROC_PER_NODE": "1", "TMPDIR": str(slurm_cluster.node_tmp)},
        wait=False,
    )


def _wait_for_step(ledger: Path, step: int, slurm_cluster, job_id: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while max((r["step"] for r in _records(ledger)), default=0) < step:
        state = slurm_cluster.job_state(job_id)
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), f"job {state} before step {step}"
        assert time.monotonic() < deadline, f"step {step} not reached"
        time.sleep(0.05)


def test_time_limit_signal_checkpoints_requeues_and_matches_uninterrupted_losses(
    slurm_cluster, dataset, reference, tmp_path
):
    """Two time-limit signals in one 2-node job: each time all ranks stop at one step, checkpoint it,
    the job requeues itself and resumes at the next step; every step runs once, and each rank's
    samples and losses equal the uninterrupted run's bit for bit. The stop file is node-local (n2 runs
    in its own mount namespace), so n2's rank learns of the stop only through the all-reduce."""
    probe = slurm_cluster.node_tmp / f"probe-{os.getpid()}"
    probe.touch()
    assert probe.exists() and not slurm_cluster.seen_on_n2(probe), "n2 must not see n1's node-local files"
    probe.unlink()
    dump, log = tmp_path / "run", tmp_path / "job.out"
    ledger = dump / "ledger" / "rank_0.jsonl"
    job = _submit(slurm_cluster, dataset, dump, log, STEPS)
    stops: list[int] = []
    for restart in range(2):
        _wait_for_step(ledger, (stops[-1] if stops else 0) + 3, slurm_cluster, job.job_id)
        slurm_cluster.scancel(job.job_id, "--signal=USR1", "--batch")
        requeued = slurm_cluster.wait(job.job_id, timeout=120, until={"PENDING"} | TERMINAL_STATES)
        text = log.read_text()
        assert requeued.records[0]["JobState"] == "PENDING", text[-6000:]
        found = [int(s) for s in re.findall(r"flux-train: stopped at step (\d+) \(SIGUSR1\)", text)]
        assert len(found) == restart + 1, text[-6000:]
        stops.append(found[-1])
        slurm_cluster.requeue_now(job.job_id)
    result = slurm_cluster.wait(job.job_id, timeout=360)
    text = log.read_text()
    assert result.returncode == 0, text[-6000:]

    assert 0 < stops[0] < stops[1] < STEPS
    for stop in stops:
        assert (dump / "checkpoint" / f"step-{stop}" / ".metadata").exists()
        assert f"stopping at step {stop}: time limit (SIGUSR1); checkpoint step-{stop} saved" in text
        assert f"requeueing job {job.job_id} to resume at step {stop + 1} (Slurm holds a requeued job PENDING" in text
        assert f"Training starts at step {stop + 1}" in text
    assert [f"start {n} of job {job.job_id}" in text for n in (1, 2, 3)] == [True] * 3
    for rank in range(2):
        records = _records(dump / "ledger" / f"rank_{rank}.jsonl")
        assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # nothing lost, nothing redone
        for record in records:
            want = reference[rank][record["step"]]
            assert (record["samples"], record["loss"]) == (want["samples"], want["loss"]), record["step"]


def test_resize_2_to_1_to_2_nodes_keeps_the_epoch_whole(slurm_cluster, dataset, reference, tmp_path):
    """2 nodes train steps 1-2 (8 samples), 1 node steps 3-4 (global batch halves: 4 samples), 2 nodes
    steps 5-6: epoch 0 is exactly the uninterrupted run's 16 samples, none twice, and epoch 1 starts
    with the same batch the uninterrupted run trains first in it; the losses up to the first step on one
    node are the uninterrupted run's (that step's: twice rank 0's, over half the batch)."""
    dump = tmp_path / "run"
    for part, (nodes, steps) in enumerate([(2, 2), (1, 4), (2, 6)]):
        log = tmp_path / f"part-{part}.out"
        job = slurm_cluster.wait(_submit(slurm_cluster, dataset, dump, log, steps, nodes).job_id, timeout=360)
        assert job.returncode == 0, log.read_text()[-6000:]
    text = log.read_text()
    assert "sample order: layout changed from 1 data-parallel rank(s) x 2 (global batch 2) to " \
           "2 data-parallel rank(s) x 2 (global batch 4)" in (tmp_path / "part-2.out").read_text()
    assert "sample order: resuming at epoch 0, sample 12 of 16" in text

    by_step: dict[int, list[int]] = {}
    losses = []
    ledgers = [read_ledger(dump / "ledger" / f"rank_{rank}.jsonl") for rank in range(2)]
    for ledger in ledgers:
        for step, record in ledger.items():
            by_step.setdefault(step, []).extend(record["samples"])
            losses.append(record["loss"])
    assert sorted(by_step) == list(range(1, 7)) and [len(by_step[s]) for s in range(1, 7)] == [4, 4, 2, 2, 4, 4]
    epoch0 = [i for step in range(1, 6) for i in by_step[step]]
    reference_epoch0 = [i for step in range(1, 5) for ledger in reference for i in ledger[step]["samples"]]
    assert Counter(epoch0) == Counter(reference_epoch0) == Counter(range(SAMPLES))
    assert by_step[6] == [i for ledger in reference for i in ledger[5]["samples"]]
    # Before the resize each rank's losses are the uninterrupted run's, bit for bit. The first step on one
    # node starts from those weights (the checkpoint) with rank 0's samples and draws of that step, over
    # half the global batch: exactly twice the uninterrupted rank 0's loss (x2 is exact in floating point).
    # Later steps differ in weights and draws (draws depend on the rank): only finiteness is asserted.
    for rank in range(2):
        assert [(ledgers[rank][s]["samples"], ledgers[rank][s]["loss"]) for s in (1, 2)] == \
            [(reference[rank][s]["samples"], reference[rank][s]["loss"]) for s in (1, 2)]
    assert ledgers[0][3]["samples"] == reference[0][3]["samples"]
    assert ledgers[0][3]["loss"] == 2 * reference[0][3]["loss"]
    assert all(math.isfinite(loss) for loss in losses)


def _cmdline(pid: int | str) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _parent(pid: int | str) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _runs_stage2(args: list[bytes], dump: Path) -> bool:
    """``python … -m stage2_train … <dump> …`` (torchrun's own command line runs ``-m torch.distributed.run``)."""
    return str(dump).encode() in args and b"-m" in args and args[args.index(b"-m") + 1] == b"stage2_train"


def _rank_pids(dump: Path) -> list[int]:
    """Training ranks of this run, not their DataLoader workers (forks: the parent's command line)."""
    return [
        int(proc.name) for proc in Path("/proc").glob("[0-9]*")
        if _runs_stage2(args := _cmdline(proc.name), dump) and _cmdline(_parent(proc.name)) != args
    ]


def _beat_pid(dump: Path, rank: int) -> int:
    """The training process of ``rank``, as its heartbeat file names it."""
    return json.loads((dump / "liveness" / f"rank_{rank}.json").read_text())["pid"]


def _wait_for_records(ledger: Path, count: int, slurm_cluster, job_id: str, timeout: float = 300) -> None:
    """Until the ledger holds ``count`` steps (a resumed start appends the steps it trains again)."""
    deadline = time.monotonic() + timeout
    while len(_records(ledger)) < count:
        assert slurm_cluster.job_state(job_id) in ("PENDING", "RUNNING", "CONFIGURING"), "job ended early"
        assert time.monotonic() < deadline, f"{count} ledger records not reached"
        time.sleep(0.05)


def _fail_a_rank(slurm_cluster, job_id: str, dump: Path, rank: int, how: signal.Signals) -> tuple[float, str]:
    """Freeze or kill ``rank``: (seconds until the job left RUNNING, its state then)."""
    pid = _beat_pid(dump, rank)
    assert pid in _rank_pids(dump)  # the heartbeat names the real training process
    os.kill(pid, how)
    since = time.monotonic()
    result = slurm_cluster.wait(job_id, timeout=TRAIN_TIMEOUT + 120, until={"PENDING"} | TERMINAL_STATES)
    return time.monotonic() - since, result.records[0]["JobState"]


def _history(dump: Path) -> str:
    command = [sys.executable, "-m", "stage2_train.history", str(dump)]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout


def test_a_frozen_and_a_killed_rank_requeue_the_job_which_resumes_with_the_uninterrupted_losses(
    slurm_cluster, dataset, reference, tmp_path
):
    """SIGSTOP rank 1, later SIGKILL rank 0: each time the launcher names the rank, its host, the step
    and the cause in one line, requeues the job within the collectives' timeout plus a bounded margin,
    and the next start resumes from the newest checkpoint; every step trained (again) has the
    uninterrupted run's samples and loss, and the job completes all steps."""
    dump, log = tmp_path / "run", tmp_path / "job.out"
    ledger = dump / "ledger" / "rank_0.jsonl"
    job = _submit(slurm_cluster, dataset, dump, log, STEPS, extra=FAILURES)
    killed = r"died without a traceback \(killed by SIGKILL"  # torchrun's record, however slow the teardown
    expected = [(1, "stopped responding", signal.SIGSTOP, 1), (0, killed, signal.SIGKILL, 2)]
    for rank, cause, how, failure in expected:
        _wait_for_records(ledger, len(_records(ledger)) + 7, slurm_cluster, job.job_id)
        elapsed, state = _fail_a_rank(slurm_cluster, job.job_id, dump, rank, how)
        text = log.read_text()
        assert state == "PENDING" and elapsed < TRAIN_TIMEOUT + REQUEUE_MARGIN, (elapsed, text[-6000:])
        line = re.findall(rf"flux-train: start {failure} failed: rank {rank} \(n\d\) at step (\d+): {cause}.*", text)
        assert line and line[0] and f"next: requeue {failure} of 3" in text, text[-6000:]
        newest_checkpoint = (int(line[0]) - 1) // 5 * 5
        slurm_cluster.requeue_now(job.job_id)
        _wait_for_records(ledger, len(_records(ledger)) + 1, slurm_cluster, job.job_id)
        assert f"Training starts at step {newest_checkpoint + 1}" in log.read_text()
    result = slurm_cluster.wait(job.job_id, timeout=360)
    assert result.returncode == 0, log.read_text()[-6000:]

    for rank in range(2):
        records = _records(dump / "ledger" / f"rank_{rank}.jsonl")
        assert {r["step"] for r in records} == set(range(1, STEPS + 1))
        for record in records:
            want = reference[rank][record["step"]]
            assert (record["samples"], record["loss"]) == (want["samples"], want["loss"]), record["step"]
    table = _history(dump).splitlines()
    assert len(table) == 4 and "  failed: start 1 failed: rank 1 (" in table[1], table
    assert "  failed: start 2 failed: rank 0 (" in table[2] and table[3].endswith(f"  completed: finished at step {STEPS}")


def test_past_the_failure_budget_the_job_ends_with_the_budget_line(slurm_cluster, dataset, tmp_path):
    """``[stage2] max_failures = 1``: the first freeze requeues (1 of 1), the second ends the job."""
    dump, log = tmp_path / "run", tmp_path / "job.out"
    ledger = dump / "ledger" / "rank_0.jsonl"
    job = _submit(slurm_cluster, dataset, dump, log, STEPS, extra=(*FAILURES, "--stage2.max_failures", "1"))
    _wait_for_records(ledger, 3, slurm_cluster, job.job_id)
    assert _fail_a_rank(slurm_cluster, job.job_id, dump, 1, signal.SIGSTOP)[1] == "PENDING"
    assert "next: requeue 1 of 1" in log.read_text()
    slurm_cluster.requeue_now(job.job_id)
    _wait_for_records(ledger, len(_records(ledger)) + 3, slurm_cluster, job.job_id)
    assert _fail_a_rank(slurm_cluster, job.job_id, dump, 1, signal.SIGSTOP)[1] == "FAILED"
    text = log.read_text()
    assert re.search(r"flux-train: start 2 failed: rank 1 \(n\d\) at step \d+: stopped responding .*; next: stop: "
                     r"failure budget spent \(2 failures, \[stage2\] max_failures = 1\)", text), text[-6000:]


def test_a_time_limit_signal_during_start_up_ends_the_job_without_a_requeue(slurm_cluster, dataset, tmp_path):
    """``--time=2 --signal=B:USR1@110``, and the signal sent as soon as the start's line is out (slurmctld's
    own, due 10 s in, once came after this tiny run had finished): a start that trains no step is not
    requeued, and says why in one line with the three figures."""
    dump, log = tmp_path / "run", tmp_path / "job.out"
    job = _submit(slurm_cluster, dataset, dump, log, STEPS, extra=("--checkpoint.interval", "5"),
                  sbatch_extra=("--time=2", "--signal=B:USR1@110"))
    deadline = time.monotonic() + 240
    while not (log.exists() and re.search(r"flux-train: start 1 of job \d+ \(", log.read_text())):
        assert time.monotonic() < deadline and slurm_cluster.job_state(job.job_id) in ("PENDING", "RUNNING")
        time.sleep(0.2)
    slurm_cluster.scancel(job.job_id, "--signal=USR1", "--batch")
    state = slurm_cluster.wait(job.job_id, timeout=240).state
    text = log.read_text()
    assert state == "FAILED" and re.findall(r"flux-train: start (\d+) of job \d+ \(", text) == ["1"], text[-6000:]
    reason = re.findall(r"flux-train: stop: no step trained past step (\d+) before the time-limit signal: it came "
                        r"(\d+) s before the 120 s time limit, and this start took (\d+) s to reach training", text)
    assert len(reason) == 1 and reason[0][0] == "0" and 100 <= int(reason[0][1]) <= 120, text[-6000:]
    assert "stopping at step 0: time limit (SIGUSR1); no step trained, no checkpoint to save" in text
    assert "checkpoint step-0 saved" not in text
    assert re.search(r"time limit +WARN +--time 120 s - signal lead \d+ s - start-up \d+ s leaves -?\d+ s of training", text)


def test_a_cancelled_job_stays_cancelled(slurm_cluster, dataset, tmp_path):
    """scancel of a running Stage 2 job: it ends CANCELLED and is not requeued (Slurm would accept a
    requeue of a cancelled job: the launcher must not ask for one)."""
    dump, log = tmp_path / "run", tmp_path / "job.out"
    job = _submit(slurm_cluster, dataset, dump, log, STEPS)
    _wait_for_step(dump / "ledger" / "rank_0.jsonl", 3, slurm_cluster, job.job_id)
    slurm_cluster.scancel(job.job_id)
    assert slurm_cluster.wait(job.job_id, timeout=60).state == "CANCELLED"
    time.sleep(5)  # a requeue would have turned it PENDING by now
    assert slurm_cluster.job_state(job.job_id) == "CANCELLED"
    assert "start 2 of job" not in log.read_text()


def test_sigterm_stops_every_rank_at_one_checkpointed_step(dataset, reference, tmp_path):
    """Preemption or scancel without the batch shell: SIGTERM to torchrun, which passes it to its ranks
    and waits for them; they agree on a step, checkpoint it, and a rerun continues with the reference's losses."""
    dump = tmp_path / "run"
    command = torchrun_command(2, dataset, dump, *COMMON, *REPLICATE_2, "--training.steps", str(STEPS))
    with open(tmp_path / "run.log", "w") as log:
        run = subprocess.Popen(command, cwd=REPO_ROOT, env=torchrun_env(), stdout=log, stderr=subprocess.STDOUT)
        ledger = dump / "ledger" / "rank_0.jsonl"
        deadline = time.monotonic() + 180
        while max((r["step"] for r in _records(ledger)), default=0) < 3:
            assert run.poll() is None and time.monotonic() < deadline, "run ended before the signal"
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
    text = (tmp_path / "run.log").read_text()
    stop = int(re.findall(r"stopping at step (\d+): preemption or scancel \(SIGTERM\)", text)[0])
    assert stop < STEPS and (dump / "checkpoint" / f"step-{stop}" / ".metadata").exists(), text[-4000:]

    resumed = run_stage2(2, dataset, dump, *COMMON, *REPLICATE_2, "--training.steps", str(STEPS))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"Training starts at step {stop + 1}" in resumed.stdout + resumed.stderr
    for rank in range(2):
        records = _records(dump / "ledger" / f"rank_{rank}.jsonl")
        assert [r["step"] for r in records] == list(range(1, STEPS + 1))
        assert all((r["samples"], r["loss"]) == (reference[rank][r["step"]]["samples"], reference[rank][r["step"]]["loss"])
                   for r in records)
