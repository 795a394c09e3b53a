"""Removing what killed or failed Stage 1 tasks leave behind: temporary stores no live writer can own,
and the store writers' shared-memory buffers. Every run (array task, prompt set) cleans up here first.

A temporary's name carries its writer (``StoreWriter``'s token ``host-pid-random``): one written on this
host by a process that is gone is abandoned; so is one untouched for longer than the staleness limit,
whichever host wrote it (a node that died cannot be asked).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

from shared import contract

SHM_PREFIX = "stage1enc"
"""Shared-memory names are ``stage1enc_<pid>_<random>``, so a killed task's buffers can be found."""
SHM_DIR = Path("/dev/shm")


def remove_stale_temporaries(directory: Path, final_names: set[str], stale_after_s: float) -> list[Path]:
    """Remove temporaries of ``final_names`` in ``directory`` that no live writer can own: written on this
    host by a process that is gone, or untouched for ``stale_after_s`` seconds (any host)."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in sorted(directory.iterdir()):
        if contract.is_temporary(path) and contract.final_name_of_temporary(path.name) in final_names:
            if _is_abandoned(path, stale_after_s):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _is_abandoned(path: Path, stale_after_s: float) -> bool:
    host, pid = _writer_of(path.name)
    if host == socket.gethostname() and pid is not None and not pid_alive(pid):
        return True
    return time.time() - _newest_mtime(path) > stale_after_s


def _writer_of(tmp_name: str) -> tuple[str | None, int | None]:
    """(host, pid) from a ``StoreWriter`` temporary name (token ``host-pid-random``); None when unparsable."""
    token = tmp_name.split(contract.TMP_INFIX, 1)[1]
    parts = token.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None, None
    return parts[0], int(parts[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _newest_mtime(path: Path) -> float:
    """Latest modification in the tree: a live writer touches some file every few seconds."""
    try:
        times = [path.stat().st_mtime] + [p.stat().st_mtime for p in path.rglob("*")]
    except FileNotFoundError:  # removed meanwhile (its writer committed or another task cleaned it)
        return time.time()
    return max(times)


def remove_stale(dataset: Path, store_names: set[str], stale_after_s: float) -> None:
    """Temporaries of these stores (and of the empty prompt) that no live writer can own, and shared
    buffers of this host's killed tasks."""
    remove_orphaned_buffers()
    remove_stale_temporaries(contract.shards_dir(dataset), store_names, stale_after_s)
    remove_stale_temporaries(dataset, {contract.EMPTY_PROMPT_STORE}, stale_after_s)


def remove_orphaned_buffers() -> list[str]:
    """Unlink shared buffers of this host's killed tasks (SIGKILL takes the resource tracker along)."""
    removed = []
    for path in SHM_DIR.glob(f"{SHM_PREFIX}_*_*") if SHM_DIR.is_dir() else []:
        pid = path.name.split("_")[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed
