"""The stop-and-requeue save with asynchronous interval saves (``[checkpoint] async_mode = "async"``),
on the real local 2-node Slurm cluster (two replicas); and every rank's peak memory and step time record.

Every step is an interval step, so the time-limit signal always lands on a step whose save TorchTitan
has only started in the background when the ranks agree to stop: the checkpoint of that step must be
complete before the processes exit (they exit hard), or the requeued job resumes a step earlier.
"""

from __future__ import annotations

import re

import pytest
from torch.distributed.checkpoint import FileSystemReader

from slurm_helpers import TERMINAL_STATES
from stage2_train.monitor.rank_log import read_rank_logs
from test_stage2_helpers import write_tiny_dataset
from test_stage2_requeue import _records, _submit, _wait_for_step

STEPS = 8
ASYNC = ("--checkpoint.async_mode", "async", "--checkpoint.interval", "1")


@pytest.fixture(scope="module")
def stopped_run(slurm_cluster, tmp_path_factory) -> dict:
    """One 2-node job, SIGUSR1 (as ``--signal=B:USR1@…`` delivers it) at step 3 or later, requeued and
    finished; what the stop left on disk is read before the resumed start saves (and purges) again."""
    root = tmp_path_factory.mktemp("async_stop")
    dataset = write_tiny_dataset(root / "ds", stores=2, samples_per_store=8)
    dump, log = root / "run", root / "job.out"
    job = _submit(slurm_cluster, dataset, dump, log, STEPS, 2, extra=ASYNC)
    _wait_for_step(dump / "ledger" / "rank_0.jsonl", 3, slurm_cluster, job.job_id)
    slurm_cluster.scancel(job.job_id, "--signal=USR1", "--batch")
    requeued = slurm_cluster.wait(job.job_id, timeout=120, until={"PENDING"} | TERMINAL_STATES)
    assert requeued.records[0]["JobState"] == "PENDING", log.read_text()[-6000:]
    stop = int(re.findall(r"flux-train: stopped at step (\d+) \(SIGUSR1\)", log.read_text())[0])
    checkpoint = dump / "checkpoint" / f"step-{stop}"
    files = {path.name: path.stat().st_size for path in checkpoint.iterdir()}
    items = FileSystemReader(str(checkpoint)).read_metadata().storage_data.values() if (checkpoint / ".metadata").exists() else []
    referenced: dict[str, int] = {}  # file -> bytes the metadata points at
    for item in items:
        referenced[item.relative_path] = referenced.get(item.relative_path, 0) + item.length
    slurm_cluster.requeue_now(job.job_id)
    result = slurm_cluster.wait(job.job_id, timeout=240)
    return {"stop": stop, "files": files, "referenced": referenced, "result": result, "log": log.read_text(), "dump": dump,
            "job": job.job_id}  # fmt: skip


def test_async_interval_saves_leave_the_stop_checkpoint_complete_and_resumable(stopped_run):
    run = stopped_run
    stop, files, text = run["stop"], run["files"], run["log"]
    assert run["result"].returncode == 0, text[-6000:]
    assert 3 <= stop < STEPS
    assert ".metadata" in files, files
    # Every file the metadata names is there, each byte in it referenced once: the two replicas (replicate 2
    # x shard 1, each holding the whole state) split the writing and neither writes a duplicate.
    assert run["referenced"] == {name: size for name, size in files.items() if name != ".metadata"}
    assert len(run["referenced"]) == 2
    assert f"requeueing job {run['job']} to resume at step {stop + 1}" in text
    assert f"Training starts at step {stop + 1}" in text
    for rank in range(2):
        ledger = _records(run["dump"] / "ledger" / f"rank_{rank}.jsonl")
        assert [r["step"] for r in ledger] == list(range(1, STEPS + 1))  # none redone from an older checkpoint


def test_every_rank_records_its_peak_memory_and_step_time(stopped_run):
    """Both ranks (one per node), both starts: a record per logged step; on CPU no allocator figures, the
    host's peak instead, and the step line says which memory it shows."""
    records = read_rank_logs(stopped_run["dump"])
    assert sorted(records) == [0, 1]
    for rank, lines in records.items():
        assert [r["step"] for r in lines] == list(range(1, STEPS + 1)), rank
        for r in lines:
            assert r["step_seconds"] > 0 and r["peak_allocated_gib"] is None and r["peak_reserved_gib"] is None
            assert 0.1 < r["peak_host_rss_gib"] < 16
    assert re.search(r"step:  4 .* memory:  \d\.\d\dGiB host peak  samples/s/GPU", stopped_run["log"])
