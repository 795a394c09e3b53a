"""Files a reader must never see half-written, and the fsyncs that make a rename survive a crash.

``atomic_write`` is the one way this project replaces a file: write a temporary beside it, then
``os.replace`` — a reader sees the old file or the new one, never a torn one. A rename is atomic but not
durable: after a power loss the new name can point at data that never reached the disk. Where that
matters (``durable=True``; the dataset identity, committed stores) the data is fsynced before the rename
and the directory after it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

TMP_INFIX = ".tmp-"
"""Temporaries are named ``.<final name>.tmp-<token>``: hidden, and traceable to the name they become."""


def temporary_name(final_name: str, token: str | None = None) -> str:
    """A hidden name beside ``final_name`` that no other process picks (``token`` defaults to pid + random)."""
    return f".{final_name}{TMP_INFIX}{token or f'{os.getpid()}-{os.urandom(4).hex()}'}"


def is_temporary(path: str | os.PathLike) -> bool:
    name = Path(path).name
    return name.startswith(".") and TMP_INFIX in name


def final_name_of_temporary(tmp_name: str) -> str:
    return tmp_name[1:].split(TMP_INFIX, 1)[0]


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[Path], None], durable: bool = False) -> None:
    """Replace ``path`` with ``data`` (bytes, text, or a function that writes the file it is given) atomically."""
    path = Path(path)
    tmp = path.with_name(temporary_name(path.name))
    try:
        if callable(data):
            data(tmp)
        elif isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a directory's entries (a rename, a link, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """Every file and directory under ``path``, before the rename that publishes it."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_dir(root)
