"""Run a module as ``__main__`` and log each file it opens or directory it lists under one directory.

    python -m bench.fs_audit LOG_DIR ROOT MODULE [ARG …]

Python's audit hooks see every ``open`` (``open``, ``os.open``, ``Path.read_text``: what Zarr and our
contract use), ``os.listdir`` and ``os.scandir``; stat calls raise no audit event and are not counted.
Each event under ROOT is one line ``<pid> <event> <path>`` in ``LOG_DIR/rank<RANK>.log`` (torchrun's
``RANK``; 0 without it), written straight to an ``O_APPEND`` descriptor: the trainer leaves through
``os._exit`` (no exit hooks run) and forked loader workers inherit the hook and write their own lines.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

EVENTS = ("open", "os.listdir", "os.scandir")


def install(log: Path, root: Path) -> None:
    """Log ``EVENTS`` on paths under ``root`` to ``log`` from now on, in this process and its forks."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # before the hook: not logged itself
    prefix = str(root.resolve()) + os.sep

    def hook(event: str, args: tuple) -> None:
        if event not in EVENTS or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.path.abspath(os.fsdecode(args[0]))
        if (path + os.sep).startswith(prefix):
            os.write(fd, f"{os.getpid()} {event} {path}\n".encode())

    sys.addaudithook(hook)


def main() -> None:
    log_dir, root, module, *args = sys.argv[1:]
    install(Path(log_dir) / f"rank{os.environ.get('RANK', '0')}.log", Path(root))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
