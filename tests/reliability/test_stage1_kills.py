"""Stage 1 fault injection: SIGKILLs aimed at writing, committing, one writer and one decode worker, two tasks on one tar, scancel and requeue through
real Slurm, a full disk. After every fault: no store under a final name is incomplete; after a rerun the
dataset is byte-identical to a clean run's."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from rel_stage1 import (
    OVERRIDES,
    PER_SHARD,
    SHARDS,
    check_committed_whole,
    check_equals_reference,
    decode_workers,
    freeze,
    kill_group,
    make_reference,
    run,
    store_writer_pid,
    stores_being_written,
    temporary_stage,
    writer_processes,
)
from test_stage1_pipeline import TINY_CONFIG, verified_stores

from fixtures import write_sample_tars
from shared import contract, heartbeat

pytest_plugins = ["fixtures_assets"]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference(tiny_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("s1-reference")
    tars = root / "tars"
    write_sample_tars(tars, shards=SHARDS, per_shard=PER_SHARD)
    return make_reference(tars, root / "clean", tiny_assets)


TARGETS = ("writing", "committing", "one writer process", "one decode worker")
ATTEMPTS = 4
"""A commit of these tiny stores takes milliseconds; a poll may miss it, so a trial may start again."""


def _wait_for(proc, dataset: Path, stage: str, seconds: float = 180) -> bool:
    """Poll until the newest temporary store shows ``stage``; False if the run ended first."""
    deadline = time.monotonic() + seconds
    while temporary_stage(dataset) != stage:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"no temporary store reached {stage!r} in {seconds} s"
        time.sleep(0.001)
    return True


def _kill_where_intended(target: str, proc, dataset: Path) -> str | None:
    """Kill the task (or one of its processes) at ``target``; the evidence that it landed there, or None
    if it was missed (the run got past it before it was frozen, or the worker had no work in hand)."""
    if target in ("writing", "committing"):
        if not _wait_for(proc, dataset, target):
            return None
        freeze(proc)
        seen, beats = temporary_stage(dataset), heartbeat.read_heartbeats(dataset)
        kill_group(proc)
        if seen != target:
            return None
        assert [b.state for b in beats] == ["running"], beats
        return f"temporary {seen}, heartbeat running on {beats[0].current_source}"
    if target == "one writer process":
        if not _wait_for(proc, dataset, "writing"):
            return None
        freeze(proc)
        held = {store_writer_pid(tmp): tmp for tmp in stores_being_written(dataset)}
        victim = next((pid for pid in writer_processes(proc.pid) if pid in held), None)
        if victim is None:  # the store went on to commit before the freeze: let the run finish, try again
            os.killpg(proc.pid, signal.SIGCONT)
            proc.wait(timeout=120)
            return None
        evidence = f"writer {victim} holding {held[victim].name} (being written)"
        cause = "store writer process died"
        os.kill(victim, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGCONT)
    else:
        victim = _busy_decode_worker(proc, dataset)
        if victim is None:
            return None
        evidence, cause = "the worker running (decoding) while the task encoded", "BrokenProcessPool"
        os.kill(victim, signal.SIGKILL)
    try:
        proc.wait(timeout=120)  # the task notices by itself, stops and says why
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise AssertionError(f"the task hung after losing {target}")
    if proc.returncode == 0 and target == "one decode worker":
        return None  # its chunk had been handed back already: nothing was lost, try again
    assert proc.returncode != 0
    beat = heartbeat.read_heartbeats(dataset)[0]
    assert beat.state == "failed" and cause in beat.message, beat
    assert contract.temporary_store_paths(dataset) == [], "the failed task left a temporary store"
    return f"{evidence}; the task failed by itself: {beat.message[:70]}"


def _two_of(find, proc) -> list[int]:
    """Both processes of a kind (two decode workers)."""
    deadline = time.monotonic() + 60
    while len(found := find(proc.pid)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, found
        time.sleep(0.01)
    return found


def _busy_decode_worker(proc, dataset: Path) -> int | None:
    """A decode worker caught running (state R) once the task is encoding (its heartbeat says running;
    while it says starting the workers are loading their tokenizers)."""
    workers = _two_of(decode_workers, proc)
    while [b.state for b in heartbeat.read_heartbeats(dataset)] != ["running"]:
        if proc.poll() is not None:
            return None
        time.sleep(0.005)
    while proc.poll() is None:
        for pid in workers:
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "R":
                    return pid
            except OSError:
                pass
        time.sleep(0.0005)
    return None


@pytest.mark.parametrize("target", TARGETS)
def test_sigkill_where_intended_then_rerun(target, reference, tiny_assets, tmp_path, tally):
    """SIGKILL aimed at one point of a task with the production process layout: while a store is being
    written (a temporary with shard files and no commit attributes, frozen with SIGSTOP to check), while
    one is committing (its attributes written, not yet renamed), or of one store-writer or one decode
    worker process (the task must then fail by itself, say why and clean up). Whatever is under a final
    name verifies; the rerun completes, equal to the clean run bit for bit."""
    tally.trial("stage1 kill trials")
    for attempt in range(ATTEMPTS):
        dataset = tmp_path / f"ds-{attempt}"
        proc = run(reference.tars, dataset, tiny_assets, wait=False)
        evidence = _kill_where_intended(target, proc, dataset)
        if proc.poll() is None:
            kill_group(proc)
        if evidence is not None:
            break
        assert proc.returncode == 0, f"a missed attempt failed ({proc.returncode})"
    else:
        pytest.fail(f"no kill landed at {target!r} in {ATTEMPTS} attempts")
    check_committed_whole(dataset)
    rerun = run(reference.tars, dataset, tiny_assets)
    assert rerun.returncode == 0, rerun.stdout
    check_equals_reference(dataset, reference)
    tally.notes.append(f"stage1 kill {target!r}: landed at attempt {attempt + 1}: {evidence}")
    tally.passed("stage1 kill trials")


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
    while not contract.temporary_store_paths(dataset):
        assert time.monotonic() < deadline, f"no temporary store appeared in {dataset} within {seconds} s"
        time.sleep(0.05)


@pytest.mark.slurm_22_05  # requeue: held ~120 s and credential revocation (slurm_helpers.requeue_now)
@pytest.mark.parametrize("fault", ["scancel", "requeue"])
def test_slurm_fault_mid_run_then_same_result(fault, slurm_cluster, reference, tiny_assets, tmp_path, tally):
    """scancel or requeue once a store is being written: scancel must end the job CANCELLED (not
    COMPLETED: the fault must land mid-run); the requeued job must run twice, the first run
    stopped by Slurm's SIGTERM. Either way the end result equals the clean run's."""
    tally.trial("stage1 slurm trials")
    dataset, logs = tmp_path / "ds", tmp_path / "logs"
    logs.mkdir()
    job = _sbatch(slurm_cluster, reference, dataset, tiny_assets, logs, "0-1" if fault == "scancel" else "0")
    slurm_cluster.wait_running(job.job_id, timeout=120)
    _wait_for_a_temporary(dataset, 120)
    if fault == "scancel":
        slurm_cluster.scancel(job.job_id)
        ended = slurm_cluster.wait(job.job_id, timeout=120)
        assert ended.state == "CANCELLED", ended.logs()
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
        assert "terminated by signal" in text, text
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
