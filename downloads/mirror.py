"""Resumable, parallel, verified copy of a remote file set into one directory.

A file appears under its final name only after its size and SHA-256 matched the remote's listing, so a
killed run leaves partial data only under ``<out>/.download/`` (where the remote resumes it) and a rerun
fetches exactly what is missing or of the wrong size (``verify`` also re-hashes what is there).
``Remote`` is the seam: ``downloads.hub.HubDataset`` implements it, tests use a local directory.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from shared.units import duration, size

STAGING = ".download"
"""Hidden folder of ``out`` holding downloads in progress (same filesystem: the final rename is atomic)."""


class FetchError(RuntimeError):
    """The download cannot start or did not finish; the message is one line and safe to log."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    """Path in the remote; the local copy is named after its last component."""
    size: int
    sha256: str | None
    """Hex digest (the Hub's LFS oid); ``None`` where the remote has none, and then size alone is checked."""

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name


class Remote(Protocol):
    def list_files(self) -> list[RemoteFile]: ...

    def fetch(self, file: RemoteFile, staging: Path) -> Path:
        """Download ``file`` under ``staging`` (resuming what a killed run left there); return its path."""
        ...


def to_fetch(files: list[RemoteFile], out: Path, verify: bool, workers: int) -> list[RemoteFile]:
    """Files without a good copy under their final name: absent, of another size, or (``verify``) another hash."""
    with ThreadPoolExecutor(workers) as pool:
        problems = list(pool.map(lambda f: mismatch(out / f.name, f, hash_it=verify), files))
    return [f for f, problem in zip(files, problems) if problem]


def mirror(remote: Remote, files: list[RemoteFile], out: Path, workers: int, progress: DownloadProgress) -> None:
    """Fetch ``files`` with ``workers`` threads; the first failure stops new starts and is raised."""
    (out / STAGING).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(workers) as pool:
        pending = {pool.submit(_fetch_one, remote, f, out) for f in files}
        try:
            while pending:
                done, pending = wait(pending, timeout=progress.interval_s, return_when=FIRST_COMPLETED)
                for future in done:
                    progress.add(future.result())
                progress.tick()
        finally:
            for future in pending:
                future.cancel()
    progress.print()


def mismatch(path: Path, file: RemoteFile, hash_it: bool) -> str | None:
    """Why ``path`` is not a good copy of ``file`` (``None`` when it is)."""
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if actual != file.size:
        return f"{actual:,} bytes, expected {file.size:,}"
    if hash_it and file.sha256:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != file.sha256:
            return f"sha256 {digest[:12]}…, expected {file.sha256[:12]}…"
    return None


def _fetch_one(remote: Remote, file: RemoteFile, out: Path) -> int:
    staged = remote.fetch(file, out / STAGING)
    problem = mismatch(staged, file, hash_it=True)
    if problem:
        staged.unlink(missing_ok=True)
        raise FetchError(f"{file.name} from {remote}: {problem}; deleted it, rerun to fetch it again")
    os.replace(staged, out / file.name)
    return file.size


class DownloadProgress:
    """A line every ``interval_s`` and at the end: files and bytes done, this run's rate, time left."""

    def __init__(self, label: str, files: int, total_bytes: int, interval_s: float):
        self.label, self.files, self.total_bytes, self.interval_s = label, files, total_bytes, interval_s
        self.files_done = self.bytes_done = 0
        self.started = self.printed = time.monotonic()

    def add(self, nbytes: int) -> None:
        self.files_done += 1
        self.bytes_done += nbytes

    def tick(self) -> None:
        if time.monotonic() - self.printed >= self.interval_s:
            self.print()

    def print(self) -> None:
        self.printed = time.monotonic()
        rate = self.bytes_done / max(self.printed - self.started, 1e-9)
        eta = (self.total_bytes - self.bytes_done) / rate if rate else None
        print(
            f"{self.label}: {self.files_done:,}/{self.files:,} files, {size(self.bytes_done)}/{size(self.total_bytes)}, "
            f"{size(rate)}/s, ETA {duration(eta)}",
            flush=True,
        )
