"""Why a sample was not encoded: one ``Skip`` type with one ``SkipReason`` wherever a sample is dropped
(reading a tar, decoding its image, reading its caption), counted per store by reason, never raised."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from shared.contract import TRUNCATED_TAR_SKIP


class SkipReason(StrEnum):
    """The reasons a store's ``skipped`` counts (its values are what the store records)."""

    DUPLICATE_KEY = "duplicate_key"
    """A key seen before in the same tar."""
    TRUNCATED_TAR = TRUNCATED_TAR_SKIP
    """The tar breaks off or ends before its end-of-archive marker (counted once, for the tar)."""
    MISSING_CAPTION = "missing_caption"
    CAPTION_NOT_UTF8 = "caption_not_utf8"
    EMPTY_CAPTION = "empty_caption"
    """Nothing printable: empty, whitespace or control characters only."""
    MISSING_IMAGE = "missing_image"
    EMPTY_IMAGE = "empty_image"
    UNDECODABLE_IMAGE = "undecodable_image"
    TOO_SMALL = "too_small"
    """Shorter side below ``image.size`` (TorchTitan rejects such images)."""
    TOO_LARGE = "too_large"
    """More than ``image.max_pixels`` (a decompression bomb, or just too big to decode safely)."""
    SEVERAL_IMAGES = "several_images"
    """More than one image member for one key: which one the caption describes is unknown."""
    LINK_MEMBER = "link_member"
    """A member of the sample is a symbolic or hard link: its bytes are not in the tar."""
    UNSAFE_NAME = "unsafe_name"
    """An absolute member name or one with a ``..`` component (a path-traversal attempt)."""
    COMPRESSED_TAR = "compressed_tar"
    """The tar is gzip/bzip2/xz/zstd-compressed; CC12M's are plain (counted once, for the tar)."""
    NOT_IN_TEXT_DATASET = "not_in_text_dataset"
    """``--text-from``: the text dataset skipped this key (its filters differ), so it has no text here."""


@dataclass(frozen=True)
class Skip:
    """A sample (or, for tar-level problems, the tar) that was not encoded, and why."""

    key: str
    reason: SkipReason
    at_byte: int | None = field(default=None, compare=False)
    """For ``TRUNCATED_TAR``: the byte of the tar where reading broke off."""
