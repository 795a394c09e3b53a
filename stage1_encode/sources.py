"""Which input tars a task encodes: a sorted list, task ``i`` of ``N`` takes tars i, i+N, i+2N, …

Derived from the input alone, so array tasks never coordinate and any array size covers every tar once.
``--input`` is a local directory or glob, or any fsspec URL: ``hf://datasets/pixparse/cc12m-wds``
streams the tars straight from the Hugging Face Hub (``HF_TOKEN`` from the environment; pin a
revision with ``hf://datasets/pixparse/cc12m-wds@<commit>``). Every source is read through the same
fsspec file object, so the streaming path is the one the local tests run.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from typing import IO, Any

import fsspec

from shared import contract
from shared.tasks import TaskSliceError, task_slice

TAR_SUFFIXES = (".tar",)
STREAM_BLOCK_BYTES = 64 * 2**20
"""Bytes per remote read: a ~500 MB CC12M tar in a few ranged requests (the Hub limits request rates)."""


class SourcesError(TaskSliceError):
    """The input names no tars, cannot be listed, or the task index does not fit the task count."""


@dataclass(frozen=True)
class TarSource:
    """One input tar, local or remote: its file name names its store."""

    fs: Any
    """The fsspec filesystem holding it."""
    path: str
    """Its path on ``fs``."""
    size: int
    tag: str | None = None
    """The listing's content tag (S3's ETag, the Hub's LFS SHA-256), when the filesystem gives one."""

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        return self.path if _is_local(self.fs) else self.fs.unstrip_protocol(self.path)

    def open(self, mode: str = "rb") -> IO[bytes]:
        """A seekable binary file; remote ones are read in ``STREAM_BLOCK_BYTES`` ranges."""
        return self.fs.open(self.path, mode, block_size=STREAM_BLOCK_BYTES)

    def fingerprint(self) -> contract.SourceFingerprint:
        """What its store records: the listing's tag when there is one, else a hash of both ends."""
        if self.tag:
            return contract.SourceFingerprint(self.size, self.tag)
        with self.open("rb") as f:
            return fingerprint_of_file(f, self.size)

    def __str__(self) -> str:
        return self.url


def list_tars(input_spec: str | os.PathLike) -> list[TarSource]:
    """All tars of a directory (not recursive) or matched by a glob, sorted by name then path."""
    spec = str(input_spec)
    try:
        fs, path = fsspec.core.url_to_fs(spec)
        if fs.isdir(path):
            entries = fs.ls(path, detail=True)
        else:
            entries = list(fs.glob(path, detail=True).values())
    except (ImportError, ValueError) as exc:  # unknown protocol, malformed URL
        raise SourcesError(f"--input {spec}: {exc}") from None
    except Exception as exc:  # network, authentication, missing repository: say so in one line
        raise SourcesError(f"--input {spec}: cannot list the input tars ({type(exc).__name__}: {exc})") from None
    tars = [
        TarSource(fs, e["name"], int(e.get("size") or 0), _content_tag(e))
        for e in entries
        if e.get("type") == "file" and e["name"].endswith(TAR_SUFFIXES)
    ]
    if not tars:
        raise SourcesError(f"--input {spec}: no input tars found (a directory of *.tar, a glob, or hf://datasets/…)")
    return sorted(tars, key=lambda t: (t.name, t.path))


def task_tars(tars: list[TarSource], task_index: int, num_tasks: int) -> list[TarSource]:
    """The tars of task ``task_index`` of ``num_tasks`` (round-robin, so big and small tars spread out)."""
    counts = Counter(contract.store_name(t.name) for t in tars)
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        raise SourcesError(f"input tars would share store names: {duplicates[:5]}")
    try:
        return task_slice(tars, task_index, num_tasks)
    except TaskSliceError as exc:
        raise SourcesError(str(exc)) from None


def _content_tag(entry: dict[str, Any]) -> str | None:
    """A remote listing's tag of the file's content, if it has one (local listings have none)."""
    etag = entry.get("ETag") or entry.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    lfs = entry.get("lfs")
    if isinstance(lfs, dict) and lfs.get("sha256"):
        return f"sha256:{lfs['sha256']}"
    return None


def _is_local(fs: Any) -> bool:
    return "file" in ((fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol)


FINGERPRINT_SPAN = 2**20
"""Bytes hashed at each end of a source tar: two ranged reads, yet a replaced or cut copy differs."""


def fingerprint_of_file(f: IO[bytes], size: int) -> contract.SourceFingerprint:
    """``ends:`` fingerprint of a seekable binary file of ``size`` bytes."""
    h = hashlib.sha256()
    h.update(f.read(FINGERPRINT_SPAN))
    if size > FINGERPRINT_SPAN:
        f.seek(max(FINGERPRINT_SPAN, size - FINGERPRINT_SPAN))
        h.update(f.read(FINGERPRINT_SPAN))
    return contract.SourceFingerprint(size, "ends:" + h.hexdigest())
