"""Stage 1 fault injection: SIGKILL at random moments, two tasks on one tar, scancel and requeue through
real Slurm, a full disk. After every fault: no store under a final name is incomplete; after a rerun the
dataset is byte-identical to a clean run's."""

from __future__ import annotations

import random
import resource
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from shared import contract
from shared.assets import write_sample_tars
from rel_stage1 import (OVERRIDES, PER_SHARD, SHARDS, check_committed_whole, check_equals_reference, kill_group,
                        make_reference, run)
from test_stage1_pipeline import TINY_CONFIG, verified_stores

pytest_plugins = ["fixtures_assets"]

REPO = Path(__file__).resolve().parents[2]
KILL_TRIALS = 20
SEED = 20240611


@pytest.fixture(scope="module")
def reference(tiny_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("s1-reference")
    tars = root / "tars"
    write_sample_tars(tars, shards=SHARDS, per_shard=PER_SHARD)
    return make_reference(tars, root / "clean", tiny_assets)


def test_sigkill_at_random_moments_then_rerun(reference, tiny_assets, tmp_path, tally):
    """KILL_TRIALS SIGKILLs at seeded random moments. Half the attempts die after a random delay in
    [0, clean run's duration] (model loading, identity, empty prompt, stores); the other half once a
    temporary store exists plus a random delay in [0, the clean run's writing time], so that kills land
    while stores are half written. The attempt after a kill is the rerun; it may itself be killed (at
    most twice in a row), else it must complete and the dataset must equal the clean run's bit for bit.
    Every kill is checked at once: whatever is under a final name verifies."""
    rng = random.Random(SEED)
    span, writing = reference.seconds, reference.seconds - reference.first_write
    kills = mid_write = completions = chain = generation = 0
    dataset = tmp_path / "ds-0"
    log = []
    deadline = time.monotonic() + 420
    while kills < KILL_TRIALS or chain:
        assert time.monotonic() < deadline, f"kill trials took too long: {log}"
        may_kill = kills < KILL_TRIALS and chain < 2
        during_writes = may_kill and rng.random() < 0.5
        delay = (rng.uniform(0, writing) if during_writes else rng.uniform(0, span)) if may_kill else None
        proc = run(reference.tars, dataset, tiny_assets, wait=False)
        started = time.monotonic()
        if during_writes:
            while proc.poll() is None and not contract.temporary_store_paths(dataset):
                time.sleep(0.005)
                assert time.monotonic() - started < 300, "a Stage 1 run hung"
            started = time.monotonic()
        while proc.poll() is None and (delay is None or time.monotonic() - started < delay):
            time.sleep(0.01)
            assert time.monotonic() - started < 300, "a Stage 1 run hung"
        if proc.poll() is None:
            had_tmp = bool(contract.temporary_store_paths(dataset))
            kill_group(proc)
            kills += 1
            chain += 1
            tally.trial("stage1 kill trials")
            mid_write += had_tmp
            committed = check_committed_whole(dataset)
            log.append(f"kill {kills} {'after 1st tmp +' if during_writes else 'at'} {delay:.1f}s: tmp={had_tmp} committed={committed}")
            continue
        assert proc.returncode == 0, f"rerun failed ({proc.returncode}); {log}"
        check_equals_reference(dataset, reference)
        completions += 1
        tally.passed("stage1 kill trials", chain)  # each kill of this chain: checked, then rerun to equality
        log.append(f"complete after {chain} kill(s)")
        chain = 0
        generation += 1
        shutil.rmtree(dataset)
        dataset = tmp_path / f"ds-{generation}"
    assert mid_write >= 4, f"too few kills landed while a temporary store existed: {log}"
    tally.notes.append(f"stage1 kills: {kills} kills, {mid_write} while a temporary existed, "
                       f"{completions} reruns compared with the clean run (clean: {span:.1f} s, first write at "
                       f"{reference.first_write:.1f} s)")


def test_two_tasks_on_the_same_tar_at_once(reference, tiny_assets, tmp_path, tally):
    tally.trial("stage1 same-tar races")
    one = str(reference.tars / "cc12m-train-0000.tar")
    dataset = tmp_path / "ds"
    procs = [run(one, dataset, tiny_assets, wait=False) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    stores = verified_stores(dataset)
    assert list(stores) == ["cc12m-train-0000.zarr"]
    assert stores["cc12m-train-0000.zarr"].checksums == reference.checksums["cc12m-train-0000.zarr"]
    assert contract.temporary_store_paths(dataset) == []
    tally.passed("stage1 same-tar races")


def _sbatch(cluster, reference, dataset, assets, logs: Path, array: str):
    return cluster.submit(
        REPO / "slurm" / "encode_array.sbatch",
        "--input", reference.tars, "--output", dataset, "--assets", assets, "--config", TINY_CONFIG, *OVERRIDES,
        sbatch_opts=[f"--array={array}", f"--output={logs}/%x_%A_%a.out", "--cpus-per-task=1"],
        env_extra={"HF_TOKEN": __import__("os").environ.get("HF_TOKEN", "")}, wait=False,
    )


def _wait_for_a_temporary(dataset: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not contract.temporary_store_paths(dataset) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.slurm_22_05  # requeue: held ~120 s and credential revocation (slurm_helpers.requeue_now)
@pytest.mark.parametrize("fault", ["scancel", "requeue"])
def test_slurm_fault_mid_run_then_same_result(fault, slurm_cluster, reference, tiny_assets, tmp_path, tally):
    tally.trial("stage1 slurm trials")
    rng = random.Random(f"{SEED}-{fault}")
    dataset, logs = tmp_path / "ds", tmp_path / "logs"
    logs.mkdir()
    job = _sbatch(slurm_cluster, reference, dataset, tiny_assets, logs, "0-1" if fault == "scancel" else "0")
    slurm_cluster.wait_running(job.job_id, timeout=120)
    _wait_for_a_temporary(dataset, 60)
    time.sleep(rng.uniform(0.0, 1.0))
    if fault == "scancel":
        slurm_cluster.scancel(job.job_id)
        ended = slurm_cluster.wait(job.job_id, timeout=120)
        assert ended.state in ("CANCELLED", "COMPLETED"), ended.logs()
        check_committed_whole(dataset)
        job = _sbatch(slurm_cluster, reference, dataset, tiny_assets, logs, "0-1")
    else:
        slurm_cluster.requeue_now(job.job_id)
        check_committed_whole(dataset)
    result = slurm_cluster.wait(job.job_id, timeout=300)
    assert (result.returncode, result.state) == (0, "COMPLETED"), result.logs()
    check_equals_reference(dataset, reference)
    if fault == "requeue":
        text = result.logs()
        assert text.count("stage1 task 0/1] 0 samples") >= 2 or "terminated by signal" in text, text
    tally.passed("stage1 slurm trials")


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_full_disk_is_a_clear_error_and_a_rerun_completes(reference, tiny_assets, tmp_path, tally):
    """A real full filesystem (a 1 MiB tmpfs; RLIMIT_FSIZE where mounting is not allowed): exit 1 with one
    clear error line, nothing committed, no temporary left; after freeing space a rerun completes."""
    tally.trial("stage1 full-disk trials")
    mnt = tmp_path / "small"
    mounted = _mount_tmpfs(mnt, "1m")
    try:
        dataset = mnt / "ds"
        limit = None if mounted else 600 * 1024
        full = run(reference.tars, dataset, tiny_assets, limit_file_bytes=limit)
        assert full.returncode == 1, full.stdout
        errors = [line for line in full.stdout.splitlines() if line.startswith("stage1_encode: error:")]
        assert len(errors) == 1 and "no space left (or file size limit)" in errors[0], full.stdout
        assert "Traceback" not in full.stdout, full.stdout
        assert contract.committed_store_paths(dataset) == [] and contract.temporary_store_paths(dataset) == []
        if mounted:
            assert subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)]).returncode == 0
        rerun = run(reference.tars, dataset, tiny_assets)
        assert rerun.returncode == 0, rerun.stdout
        check_equals_reference(dataset, reference)
    finally:
        if mounted:
            for log in mnt.glob("*.log"):  # keep the logs for the HF_TOKEN scan
                shutil.copy(log, tmp_path / log.name)
            subprocess.run(["umount", "-l", str(mnt)])
    tally.notes.append(f"full disk simulated with {'a 1 MiB tmpfs' if mounted else 'RLIMIT_FSIZE'}")
    tally.passed("stage1 full-disk trials")
