"""Room and permission to write where a job writes: ENOSPC or EACCES hours in wastes the hours."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from preflight.table import FAIL, OK, WARN, Row
from shared.units import size

SPARE = 1.2
"""Below this many times the estimate, space is tight (WARN): estimates are averages."""


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) ``path``."""
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def writable_row(label: str, path: Path) -> Row:
    """Create and delete a file where the job will write (or in the nearest existing parent)."""
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return Row(label, FAIL, f"{probe} is not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=".preflight-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        return Row(label, FAIL, f"cannot create files in {probe}: {e.strerror or e}")
    return Row(label, OK, f"writable: {path}" if probe == path.absolute() else f"{path} will be created in {probe}")


def space_row(label: str, needed: float, free: int, basis: str) -> Row:
    text = f"{size(free)} free, {size(needed)} needed: {basis}"
    if free < needed:
        return Row(label, FAIL, text)
    return Row(label, WARN if free < needed * SPARE else OK, text)
