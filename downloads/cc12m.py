"""``pixparse/cc12m-wds`` (2,176 WebDataset tars, ~1 TB) onto a shared filesystem, as Stage 1's ``--input``.

Resumable and verified by ``downloads.mirror``; split across a Slurm array exactly as Stage 1 splits
its input (``shared.tasks.task_slice``, as Stage 1: task i of N takes tars i, i+N, … of the sorted selection),
so the tars are named and ordered before any network call and a bad task index fails at once.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from downloads.hub import FetchError, HubDataset, hub_errors, require_space, require_token
from downloads.mirror import DownloadProgress, Remote, mirror, to_fetch
from preflight.storage import free_bytes
from shared.tasks import task_slice

REPO_ID = "pixparse/cc12m-wds"
NUM_SHARDS = 2176
SHARD_NAME = re.compile(r"cc12m-train-\d{4}\.tar")


def shard_name(index: int) -> str:
    return f"cc12m-train-{index:04d}.tar"


def parse_shards(text: str) -> range:
    """``a-b`` (inclusive) or ``a``, within 0..2175: the argparse ``type`` of ``--shards``."""
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shard range like 0-9 or 42")
    first, last = match.group(1), match.group(2) or match.group(1)
    shards = range(int(first), int(last) + 1)
    if not shards or shards[-1] >= NUM_SHARDS:
        raise argparse.ArgumentTypeError(f"{text!r} must name shards within 0-{NUM_SHARDS - 1}, first <= last")
    return shards


def task_shards(shards: range, task_index: int, num_tasks: int) -> list[str]:
    """Names of the tars that task ``task_index`` of ``num_tasks`` downloads (Stage 1's slicing)."""
    return task_slice([shard_name(i) for i in sorted(shards)], task_index, num_tasks)


def download_cc12m(out: Path, names: list[str], workers: int, verify: bool, interval_s: float = 30.0) -> str:
    """Download the named tars from the Hub into ``out``; returns a one-line summary."""
    token = require_token(REPO_ID)
    with hub_errors(REPO_ID, token, out):
        return mirror_tars(HubDataset(REPO_ID, token, SHARD_NAME), out, names, workers, verify, interval_s)


def mirror_tars(remote: Remote, out: Path, names: list[str], workers: int, verify: bool, interval_s: float) -> str:
    """Fetch what of ``names`` is missing or broken in ``out``: checks the listing, then the disk space."""
    listed = {f.name: f for f in remote.list_files()}
    absent = [name for name in names if name not in listed]
    if absent:
        raise FetchError(f"{remote} lists no {absent[0]} ({len(absent)} of the {len(names)} requested tars)")
    files = [listed[name] for name in names]
    todo = to_fetch(files, out, verify, workers)
    todo_bytes = sum(f.size for f in todo)
    require_space(out, todo_bytes, free_bytes(out))
    mirror(remote, todo, out, workers, DownloadProgress("cc12m", len(todo), todo_bytes, interval_s))
    return f"{len(files)} tars in {out}: {len(todo)} fetched, {len(files) - len(todo)} already there"
