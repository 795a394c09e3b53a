"""Read one WebDataset tar into samples, never crashing on bad content and never losing good samples.

Members are grouped by key the way WebDataset does (``dir/key.ext``: key = path up to the first dot of
the file name, extension lower-cased). Only image and caption members are kept; other members
(``.json``, …) are ignored. Problems are reported as ``Skip`` items so they are counted, not raised:
a key seen before in the same tar is a ``duplicate_key``; a sample with a link member (``link_member``)
or an absolute or ``..`` name (``unsafe_name``) is skipped whole (nothing is ever extracted to disk, so
no name can reach outside the output directory); a compressed tar is one ``compressed_tar`` skip; a tar
that breaks or ends before its end-of-archive marker yields the samples before the break, then a
``truncated_tar`` skip. Errors of the file system itself (EIO, …) are raised: that is the cluster's
problem, and a rerun must retry the tar.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator, Protocol

from stage1_encode.skips import Skip, SkipReason

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
"""Image members, in order of preference when one sample has several."""
CAPTION_EXTENSION = "txt"

_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset.tariterators.base_plus_ext
_END_MARKER = bytes(1024)
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")  # gzip, bzip2, xz, zstd


@dataclass
class RawSample:
    """A sample's undecoded members: extension -> bytes (images and caption only)."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    end_byte: int = field(default=0, compare=False)
    """Where its last member ends in the tar: how far reading got (the progress line's ETA)."""
    problem: SkipReason | None = None
    """Set when a member makes the whole sample unusable (a link, an unsafe name)."""

    def images(self) -> list[bytes]:
        return [self.members[ext] for ext in IMAGE_EXTENSIONS if ext in self.members]


class TarFile(Protocol):
    """What ``read_tar`` needs of a tar: a name and a seekable binary ``open("rb")`` (a ``Path`` has both)."""

    name: str

    def open(self, mode: str) -> IO[bytes]: ...


def read_tar(source: TarFile | str | os.PathLike) -> Iterator[RawSample | Skip]:
    """Samples of ``source`` (a path, or a ``sources.TarSource``) in tar order, interleaved with ``Skip``
    items for problems. The tar is read once, front to back, so a remote one streams."""
    if isinstance(source, (str, os.PathLike)):
        source = Path(source)
    seen: set[str] = set()
    current: RawSample | None = None

    def finish(sample: RawSample | None) -> Iterator[RawSample | Skip]:
        if sample is None:
            return
        if sample.key in seen:
            yield Skip(sample.key, SkipReason.DUPLICATE_KEY)
        elif sample.problem is not None:
            seen.add(sample.key)
            yield Skip(sample.key, sample.problem)
        else:
            seen.add(sample.key)
            yield sample

    with source.open("rb") as f:
        if _is_compressed(f):
            yield Skip(source.name, SkipReason.COMPRESSED_TAR)
            return
        try:
            with tarfile.open(fileobj=f, mode="r|") as tar:
                for member in tar:
                    match = _KEY_EXT.match(member.name)
                    problem = _member_problem(member)
                    if match is None or (problem is None and not member.isfile()):
                        continue
                    key, ext = match.group(1), match.group(2).lower()
                    if ext != CAPTION_EXTENSION and ext not in IMAGE_EXTENSIONS:
                        continue
                    data = b"" if problem else tar.extractfile(member).read()
                    if current is None or current.key != key or ext in current.members:
                        yield from finish(current)
                        current = RawSample(key)
                    current.members[ext] = data
                    current.end_byte = member.offset_data + member.size
                    current.problem = current.problem or problem
        except (tarfile.TarError, EOFError):
            yield from finish(current)
            yield Skip(source.name, SkipReason.TRUNCATED_TAR, at_byte=f.tell())
            return
        yield from finish(current)
        if not _ends_with_marker(f):
            yield Skip(source.name, SkipReason.TRUNCATED_TAR, at_byte=f.tell())


def _member_problem(member: tarfile.TarInfo) -> SkipReason | None:
    if member.issym() or member.islnk():
        return SkipReason.LINK_MEMBER
    if member.name.startswith("/") or ".." in member.name.split("/"):
        return SkipReason.UNSAFE_NAME
    return None


def _is_compressed(f: IO[bytes]) -> bool:
    head = f.read(6)
    f.seek(0)
    return head.startswith(_COMPRESSED_MAGIC)


def _ends_with_marker(f: IO[bytes]) -> bool:
    """A whole tar ends with two zero blocks; a copy cut at a member boundary does not."""
    f.seek(0, os.SEEK_END)
    if f.tell() < len(_END_MARKER):
        return False
    f.seek(-len(_END_MARKER), os.SEEK_END)
    return f.read() == _END_MARKER
