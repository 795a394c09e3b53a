"""Start-up at CC12M scale: rank 0 alone reads the stores' metadata and broadcasts it (``stage2_train.data.manifest``),
so what the other ranks read before their first step does not grow with the number of stores."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from shared.contract import ContractError
from shared.heartbeat import Heartbeat, write_heartbeat
from stage2_train.data.dataset import PrecomputedDataset
from stage2_train.data.manifest import DatasetManifest, read_manifest
from test_stage2_helpers import REPO_ROOT, tiny_identity, torchrun_command, torchrun_env, write_tiny_dataset

STORES = 40


def test_only_rank_0_reads_the_stores_metadata_before_the_first_step():
    """The start-up benchmark's smoke path: 2 ranks (torchrun, gloo) on a complete 40-store dataset."""
    result = subprocess.run([sys.executable, "-m", "bench.startup_fs_ops", "--stores", str(STORES)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = sorted(map(json.loads, result.stdout.splitlines()), key=lambda r: r["rank"])
    assert rank0["value"] >= STORES  # the count sees what rank 0 reads: every store's zarr.json
    assert rank1["value"] == 0 and rank1["listings"] == 0, rank1
    assert rank1["dataset_file_opens"] < 20  # dataset.json and the empty prompt, whatever the store count


def test_rank_0s_refusal_stops_every_rank_with_its_message(tmp_path):
    """An unfinished dataset is judged on rank 0 only; rank 1 must stop with the same line, not wait."""
    dataset = write_tiny_dataset(tmp_path / "ds", stores=2, samples_per_store=8)
    now = time.time()
    write_heartbeat(dataset, Heartbeat(0, 1, ["synthetic-0000.zarr", "synthetic-0001.zarr", "synthetic-0002.zarr"],
                                       "running", now - 60, now))  # fmt: skip
    # torchrun stops the other rank (SIGTERM) as soon as it sees one exit: look every 2 s, not every 0.1 s,
    # so a rank 1 that says its line a moment after rank 0 is not cut off before it does.
    command = torchrun_command(2, dataset, tmp_path / "dump")
    command.insert(1, "--monitor-interval=2")
    result = subprocess.run(command, cwd=REPO_ROOT, env=torchrun_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    said = "stage2_train: error: dataset"
    summary = [line for line in result.stderr.splitlines() if f"traceback : {said}" in line]
    # Each rank's own line (a rank 1 that waited, was killed or raised another error would leave one) —
    # counted, not matched at line starts: the two ranks share stderr, and a line may start mid-line — and
    # torchrun's failure summary naming it from the error file rather than a traceback.
    assert result.stderr.count(said) - len(summary) == 2 and summary, result.stderr[-4000:]
    assert result.stderr.count("missing the stores of input tars synthetic-0002") == result.stderr.count(said)


def test_a_store_rewritten_after_start_up_stops_at_its_first_read(tmp_path):
    """Rank 0's counts number the samples; a store whose count changed since would renumber them."""
    dataset = write_tiny_dataset(tmp_path / "ds", stores=2, samples_per_store=8)
    read = read_manifest(dataset, tiny_identity())
    assert read == DatasetManifest(stores=(("synthetic-0000.zarr", 8), ("synthetic-0001.zarr", 8)))
    at_start = DatasetManifest(stores=(("synthetic-0000.zarr", 8), ("synthetic-0001.zarr", 6)))
    ds = PrecomputedDataset(dataset, tiny_identity(), "fail", at_start)
    assert len(ds) == 14 and ds[7]["index"] == 7
    with pytest.raises(ContractError, match="synthetic-0001.zarr: 8 samples now, 6 when the run started"):
        ds[8]
