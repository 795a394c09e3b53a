"""A local directory behind ``downloads.mirror.Remote`` (our own interface; the Hub implements it too),
for the CC12M download tests. Not a test module: the killed-download test also runs it in a subprocess."""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path

from downloads.cc12m import shard_name
from downloads.mirror import RemoteFile

CHUNK = 16 * 1024


class DirectoryRemote:
    """Serves the files of ``root``; appends each fetched name to ``log``; sleeps ``delay_s`` per chunk."""

    def __init__(self, root: Path, log: Path, delay_s: float = 0.0, lie_about: str | None = None):
        self.root, self.log, self.delay_s, self.lie_about = root, log, delay_s, lie_about

    def __str__(self) -> str:
        return f"directory {self.root}"

    def list_files(self) -> list[RemoteFile]:
        files = []
        for p in sorted(self.root.iterdir()):
            sha = hashlib.sha256(p.read_bytes()).hexdigest()
            files.append(RemoteFile(f"data/{p.name}", p.stat().st_size, "0" * 64 if p.name == self.lie_about else sha))
        return files

    def fetch(self, file: RemoteFile, staging: Path) -> Path:
        with open(self.log, "a") as log:
            log.write(file.name + "\n")
        dest = staging / file.name
        with open(self.root / file.name, "rb") as src, open(dest, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
                out.flush()
                time.sleep(self.delay_s)
        return dest

    def fetched(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


def write_remote(root: Path, count: int, size: int) -> list[str]:
    """``count`` files named as CC12M's tars, of random bytes; returns their names."""
    root.mkdir(parents=True)
    rng = random.Random(0)
    names = [shard_name(i) for i in range(count)]
    for name in names:
        (root / name).write_bytes(rng.randbytes(size))
    return names
