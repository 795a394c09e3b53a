"""Stage 1 helpers for the reliability suite (no tests here): one tiny tar set, the clean reference run
the checks every fault-injection trial ends with, and how to find the task's processes and the stage of
its temporary store. Builds on tests/test_stage1_pipeline.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from shared import contract
from shared.store import verify_store
from test_stage1_pipeline import fingerprint, run_cli, verified_stores
from test_stage2_train import _descendants

# Small Zarr shards (several shard writes per store); the production process layout: decode worker
# processes (two, so that killing one leaves another) and one store-writer process per store in flight.
OVERRIDES = ("--storage.samples_per_shard", "2", "--workers.decode", "2")
SHARDS, PER_SHARD = 2, 8


@dataclass
class Reference:
    tars: Path
    dataset: Path
    seconds: float
    first_write: float                     # seconds from start until the first temporary store appeared
    prints: dict[str, dict[str, str]]      # store (and empty prompt) -> file -> sha256
    checksums: dict[str, dict[str, str]]   # store -> array -> recorded checksum


def run(tars: Path | str, dataset: Path, assets: Path, *extra: str, **kw):
    return run_cli(Path(tars) if not isinstance(tars, str) else tars, dataset, assets, *OVERRIDES, *extra, **kw)


def dataset_prints(dataset: Path) -> dict[str, dict[str, str]]:
    out = {name: fingerprint(contract.shards_dir(dataset) / name)
           for name in sorted(p.name for p in contract.committed_store_paths(dataset))}
    out[contract.EMPTY_PROMPT_STORE] = fingerprint(dataset / contract.EMPTY_PROMPT_STORE)
    return out


def check_committed_whole(dataset: Path) -> int:
    """Every store under a final name (shards and the empty prompt) verifies; returns how many."""
    if not (dataset / contract.DATASET_FILE).exists():
        assert not contract.shards_dir(dataset).exists() or not contract.committed_store_paths(dataset)
        return 0
    stores = verified_stores(dataset)
    empty = dataset / contract.EMPTY_PROMPT_STORE
    if empty.exists():
        ident = contract.read_identity(dataset)
        assert verify_store(empty, ident, contract.empty_prompt_specs(ident)) == [], empty
    return len(stores)


def check_equals_reference(dataset: Path, ref: Reference) -> None:
    """The dataset is what the clean run made: same stores, same checksums, same bytes, no leftovers."""
    stores = verified_stores(dataset)
    assert sorted(stores) == sorted(ref.checksums), sorted(stores)
    for name, attrs in stores.items():
        assert attrs.checksums == ref.checksums[name], name
    assert dataset_prints(dataset) == ref.prints
    assert contract.temporary_store_paths(dataset) == []


def make_reference(tars: Path, dataset: Path, assets: Path) -> Reference:
    started = time.monotonic()
    proc = run(tars, dataset, assets, wait=False)
    first_write = None
    while proc.poll() is None:
        if first_write is None and contract.temporary_store_paths(dataset):
            first_write = time.monotonic() - started
        time.sleep(0.01)
        assert time.monotonic() - started < 300, "the clean Stage 1 run hung"
    seconds = time.monotonic() - started
    assert proc.returncode == 0
    assert first_write is not None, "never saw a temporary store"
    checksums = {name: attrs.checksums for name, attrs in verified_stores(dataset).items()}
    assert len(checksums) == SHARDS
    return Reference(tars, dataset, seconds, first_write, dataset_prints(dataset), checksums)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stopped (frozen) processes die too
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def _reads(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def writer_processes(task_pid: int) -> list[int]:
    """The task's store-writer processes: spawned children that map its shared batch buffers."""
    return [pid for pid in _descendants(task_pid)
            if "spawn_main" in _reads(f"/proc/{pid}/cmdline") and "/dev/shm/stage1enc_" in _reads(f"/proc/{pid}/maps")]


def decode_workers(task_pid: int) -> list[int]:
    """The task's decode worker processes: spawned children that are neither writers nor the resource tracker."""
    writers = set(writer_processes(task_pid))
    return [pid for pid in _descendants(task_pid) if pid not in writers
            and "spawn_main" in (cmd := _reads(f"/proc/{pid}/cmdline")) and "resource_tracker" not in cmd]


def store_writer_pid(temporary: Path) -> int:
    """The process writing a temporary store: the pid its name carries (``StoreWriter``'s token is
    host-pid-random, and the store is created in the writer process that fills it)."""
    return int(temporary.name.split(contract.TMP_INFIX, 1)[1].rsplit("-", 2)[1])


def stores_being_written(dataset: Path) -> list[Path]:
    """Temporary stores with shard files and no commit attributes yet (``temporary_stage`` "writing")."""
    return [tmp for tmp in contract.temporary_store_paths(dataset) if _stage(tmp) == "writing"]


def _stage(tmp: Path) -> str | None:
    try:
        attrs = json.loads((tmp / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return None
    if "num_samples" in attrs:
        return "committing"
    return "writing" if any(p.is_file() and "/c/" in str(p) for p in tmp.rglob("*")) else None


def temporary_stage(dataset: Path) -> str | None:
    """What the newest temporary store shows: "writing" (shard files, no commit attributes yet),
    "committing" (its root metadata holds the store attributes ``commit`` writes before verify, fsync
    and rename), or None (no temporary, or one without any shard file yet)."""
    stages = [stage for tmp in contract.temporary_store_paths(dataset) if (stage := _stage(tmp))]
    return "committing" if "committing" in stages else (stages[0] if stages else None)


def freeze(proc: subprocess.Popen) -> None:
    """SIGSTOP the task's whole process group: what a test reads next is the state at the kill."""
    os.killpg(proc.pid, signal.SIGSTOP)
