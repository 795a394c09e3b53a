"""The writes a crash must not tear are synced in order, seen in a real Stage 1 run's syscalls.

A SIGKILL never loses what the page cache holds, so the kill tests cannot tell a synced commit from an
unsynced one; after a power loss only the order tells. Under ``strace -f`` (tests/syscall_trace.py)
a real ``python -m stage1_encode`` run must, for every store it commits (the per-tar stores and the
empty-prompt store), fsync every file and directory of the store before the rename that commits it
and the parent directory right after (the thread's next traced call); and fsync ``dataset.json``
before linking it into place and the dataset directory right after. Heartbeats and progress files
are not covered: a crash may tear them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from shared import contract
from fixtures import write_sample_tars
from syscall_trace import Call, read_calls, strace

pytest_plugins = ["fixtures_assets"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def traced_run(tiny_assets, tmp_path_factory) -> tuple[Path, list[Call]]:
    """A dataset of two stores (two tars) written by Stage 1 under strace, and its traced calls."""
    root = tmp_path_factory.mktemp("traced")
    write_sample_tars(root / "tars", shards=2, per_shard=3)
    dataset, trace = root / "ds", root / "strace.txt"
    cmd = [sys.executable, "-m", "stage1_encode", "--input", str(root / "tars"), "--output", str(dataset),
           "--assets", str(tiny_assets), "--config", str(REPO / "configs" / "encode_tiny.toml")]
    proc = strace(cmd, trace, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                  capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dataset, read_calls(trace)


def _synced_before(calls: list[Call], path: str, moment: int) -> bool:
    return any(c.name in ("fsync", "fdatasync") and c.ok and c.paths == (path,) and c.end < moment for c in calls)


def _synced_next(calls: list[Call], path: str, after: Call) -> bool:
    """The thread's next traced call after ``after`` syncs ``path`` (a later commit's sync of the same
    directory would not say that this rename or link was made durable before the run went on)."""
    later = [c for c in calls if c.pid == after.pid and c.start > after.end]
    return bool(later) and later[0].name == "fsync" and later[0].ok and later[0].paths == (path,)


def test_every_store_is_synced_before_the_rename_that_commits_it_and_its_parent_after(traced_run):
    dataset, calls = traced_run
    stores = [*contract.committed_store_paths(dataset), dataset / contract.EMPTY_PROMPT_STORE]
    assert len(stores) == 3 and all(s.is_dir() for s in stores)
    for store in stores:
        commits = [c for c in calls if c.name.startswith("rename") and c.ok and c.paths[1:] == (str(store),)]
        assert len(commits) == 1, f"{store.name}: committed by {len(commits)} renames"
        commit = commits[0]
        temporary = Path(commit.paths[0])
        entries = [store, *store.rglob("*")]
        assert any(p.is_file() and p.parent.name == "0" for p in entries), "the store holds chunk data"
        unsynced = [str(p.relative_to(store)) or "." for p in entries
                    if not _synced_before(calls, str(temporary / p.relative_to(store)), commit.start)]
        assert unsynced == [], f"{store.name}: not synced before its commit: {unsynced}"
        assert _synced_next(calls, str(store.parent), commit), f"{store.parent} not synced right after the commit"


def test_the_dataset_identity_is_synced_before_its_link_and_the_directory_after(traced_run):
    dataset, calls = traced_run
    identity_file = str(dataset / contract.DATASET_FILE)
    links = [c for c in calls if c.name.startswith("link") and c.ok and c.paths[1:] == (identity_file,)]
    assert len(links) == 1, f"dataset.json linked into place {len(links)} times"
    link = links[0]
    assert _synced_before(calls, link.paths[0], link.start), "dataset.json's content not synced before the link"
    assert _synced_next(calls, str(dataset), link), "the dataset directory not synced right after the link"
