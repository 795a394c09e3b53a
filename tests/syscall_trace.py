"""Run a command under ``strace -f -y`` and read back the file-durability syscalls in the order they ran.

A crash-consistency claim is about order (file synced, then renamed into place, then its directory
synced), which no kill test can show: a SIGKILL never loses what the page cache holds. strace records
the order itself. ``-y`` prints each descriptor's path, so ``fsync(3</ds/shards/.x.tmp/t5/c/0/0/0>)``
names the file synced; with ``-f`` a call interrupted by another thread's is split into
``<unfinished ...>`` and ``<... resumed>`` lines, and each event keeps both line numbers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

TRACED = "fsync,fdatasync,rename,renameat,renameat2,link,linkat"
_LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. (\w+) resumed>(.*)|(\w+)\((.*))$")
_FD_PATH = re.compile(r"^\d+<([^>]*)>")  # not greedy: "<unfinished ...>" may follow
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_RESULT = re.compile(r"\)\s+=\s+(-?\d+)[^=]*$")


@dataclass(frozen=True)
class Call:
    """One syscall: ``start``/``end`` are the trace lines where it began and returned."""

    pid: str  # the thread (strace -f numbers threads)
    name: str
    paths: tuple[str, ...]  # an fsync's file; a rename's or link's (source, destination)
    ok: bool
    start: int
    end: int


def strace(cmd: list[str], trace: Path, **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd`` under strace (seccomp-filtered: only the traced calls stop the process)."""
    exe = shutil.which("strace")
    assert exe, "strace is missing: bash scripts/setup.sh installs it"
    full = [exe, "--seccomp-bpf", "-f", "-y", "-qq", "-e", "signal=none", "-e", f"trace={TRACED}",
            "-s", "4096", "-o", str(trace), *cmd]
    return subprocess.run(full, **kwargs)


def read_calls(trace: Path) -> list[Call]:
    """The traced calls, in the order they started."""
    pending: dict[tuple[str, str], tuple[int, str]] = {}
    calls = []
    for number, line in enumerate(trace.read_text().splitlines()):
        m = _LINE.match(line)
        if not m:
            continue
        pid, resumed_name, resumed_rest, name, rest = m.groups()
        if resumed_name:
            start, args = pending.pop((pid, resumed_name))
            calls.append(_call(pid, resumed_name, args, resumed_rest, start, number))
        elif rest.endswith("<unfinished ...>"):
            pending[(pid, name)] = (number, rest)
        else:
            calls.append(_call(pid, name, rest, rest, number, number))
    return sorted(calls, key=lambda c: c.start)


def _call(pid: str, name: str, args: str, tail: str, start: int, end: int) -> Call:
    result = _RESULT.search(tail)
    ok = result is not None and int(result.group(1)) >= 0
    if name in ("fsync", "fdatasync"):
        fd = _FD_PATH.match(args)
        paths = (fd.group(1),) if fd else ()
    else:
        paths = tuple(_STRING.findall(args))[:2]
    return Call(pid, name, paths, ok, start, end)
