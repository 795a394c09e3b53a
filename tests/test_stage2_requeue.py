"""Stage 2 under Slurm's time limits, requeues and resizes, on the real local 2-node cluster (and
SIGTERM straight to torchrun, as preemption delivers it).

``scancel --signal=USR1 --batch`` is what ``#SBATCH --signal=B:USR1@300`` delivers before the time
limit. Checkpoints come only from those stops and the last step (the interval is beyond the run), so
every stop checkpoints a step off the interval. The uninterrupted reference is the same 2-rank
layout (replicate 2 x shard 1) under torchrun.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
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


def _submit(slurm_cluster, dataset: Path, dump: Path, log: Path, steps: int, nodes: int = 2, *overrides: str):
    return slurm_cluster.submit(
        TRAIN_SBATCH,
        *("--job.config_file", TINY_CONFIG, "--training.dataset_path", dataset, "--job.dump_folder", dump),
        *COMMON, "--training.steps", str(steps), *overrides,
        sbatch_opts=["--output", str(log), "--nodes", str(nodes)],
        # The stop file goes to $TMPDIR on the batch shell's node, n1: n2's ranks cannot see it there. The
        # directory is this cluster's own (concurrent local clusters all number jobs from 1).
        env_extra={"NPROC_PER_NODE": "1", "TMPDIR": str(slurm_cluster.node_tmp)},
        wait=False,
    )


def _wait_for_step(ledger: Path, step: int, slurm_cluster, job_id: str, timeout: float = 180) -> None:
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
    result = slurm_cluster.wait(job.job_id, timeout=240)
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
        job = slurm_cluster.wait(_submit(slurm_cluster, dataset, dump, log, steps, nodes).job_id, timeout=240)
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


def test_a_dead_rank_ends_the_whole_job(slurm_cluster, dataset, tmp_path):
    """SIGKILL one training process of a 2-node job mid-run: the job fails within seconds (torchrun
    on its node fails, srun --kill-on-bad-exit ends the other node), not after a collective timeout."""
    dump, log = tmp_path / "run", tmp_path / "job.out"
    job = _submit(slurm_cluster, dataset, dump, log, STEPS)
    _wait_for_step(dump / "ledger" / "rank_0.jsonl", 3, slurm_cluster, job.job_id)
    victims = _rank_pids(dump)
    assert len(victims) == 2, victims
    killed_at = time.monotonic()
    os.kill(victims[1], signal.SIGKILL)
    result = slurm_cluster.wait(job.job_id, timeout=60)
    assert result.state == "FAILED" and result.returncode != 0, log.read_text()[-6000:]
    assert time.monotonic() - killed_at < 30
    assert not _rank_pids(dump)


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
