"""Removing temporary stores that no live writer can own (left by killed or failed tasks).

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
