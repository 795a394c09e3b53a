"""The one catalogue of Stage 1 input kinds (no tests here): each distinct bad input once, with the
``SkipReason`` it must get, beside the valid controls that must be kept. tests/reliability/test_bad_input.py
runs it through the ``python -m stage1_encode`` command; nothing else repeats these kinds.

A kind is one way an input can be odd, not one file: two kinds may share a skip reason when they reach
it by different code paths (a key repeated later vs the same member twice).
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from stage1_encode.skips import SkipReason
from test_stage1_units import add, image_bytes

OK = "ok"
Member = tarfile.TarInfo | tuple[str, bytes]
BOMB_SIDE = 40_000
"""The decompression bomb's declared width and height (1.6 G pixels, 4.8 GB once decoded as RGB)."""


@dataclass(frozen=True)
class Kind:
    name: str
    members: tuple[Member, ...]
    expected: str
    """``OK`` (a valid control: kept and encoded) or the ``SkipReason`` it is counted under."""
    first_kept: bool = False
    """A repeated member: the first (image, caption) pair is a sample, only the repeat is skipped."""

    @property
    def key(self) -> str:
        """The key Stage 1 gives this sample (the last member's name up to its first dot)."""
        last = self.members[-1]
        name = last.name if isinstance(last, tarfile.TarInfo) else last[0]
        directory, _, base = name.rpartition("/")
        return (directory + "/" if directory else "") + base.split(".", 1)[0]


@dataclass(frozen=True)
class TarKind:
    """A kind that is a whole tar: counted once, under the tar's name."""

    name: str
    file: str
    data: bytes
    expected: SkipReason
    keys: tuple[str, ...] = ()
    """The samples kept from it (those before a break)."""


def _pair(key: str, image: bytes, ext: str = "jpg", caption: bytes = b"a red fox in the snow") -> tuple[Member, ...]:
    return (f"{key}.{ext}", image), (f"{key}.txt", caption)


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _folder(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def png_bomb(side: int = BOMB_SIDE, rows: int = 300) -> bytes:
    """A real PNG bomb: an RGB PNG declaring ``side`` x ``side`` whose IDAT holds ``rows`` rows of zeros
    (a few tens of KB on disk; a decoder that trusted the header would allocate side² x 3 bytes)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    pixels = zlib.compress(bytes((3 * side + 1) * rows), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def jpeg_cut_mid_scan(jpeg: bytes) -> bytes:
    """``jpeg`` cut half-way through its entropy-coded scan (after the start-of-scan marker)."""
    scan = jpeg.index(b"\xff\xda")
    cut = scan + (len(jpeg) - scan) // 2
    assert cut > scan + 100, "the scan is too short to cut inside it"
    return jpeg[:cut]


def sample_kinds(outside: Path) -> list[Kind]:
    """Every sample-level kind, in tar order. ``outside`` is a directory the run must never write to:
    the absolute member name points into it."""
    jpeg = image_bytes("RGB", (400, 300))
    return [
        # valid controls: odd but good, each must be kept
        Kind("RGB JPEG", _pair("ok_rgb", jpeg), OK),
        Kind("grayscale JPEG", _pair("ok_gray", image_bytes("L", (300, 380))), OK),
        Kind("CMYK JPEG", _pair("ok_cmyk", image_bytes("CMYK", (420, 300))), OK),
        Kind("palette PNG", _pair("ok_palette", image_bytes("P", (300, 300), "PNG"), "png"), OK),
        Kind("palette PNG with transparency", _pair("ok_palette_alpha", image_bytes("P", (300, 330), "PNG", transparency=0), "png"), OK),
        Kind("16-bit grayscale PNG", _pair("ok_16bit", image_bytes("I;16", (310, 300), "PNG"), "png"), OK),
        Kind("RGBA PNG", _pair("ok_rgba", image_bytes("RGBA", (256, 300), "PNG"), "png"), OK),
        Kind("gray+alpha PNG", _pair("ok_la", image_bytes("LA", (300, 300), "PNG"), "png"), OK),
        Kind("bilevel PNG", _pair("ok_bilevel", image_bytes("1", (300, 300), "PNG"), "png"), OK),
        Kind("EXIF-rotated JPEG (orientation 6)", _pair("ok_exif", image_bytes("RGB", (400, 300), orientation=6)), OK),
        Kind(".jpeg extension", _pair("ok_jpeg_ext", jpeg, "jpeg"), OK),
        Kind("upper-case extension", _pair("ok_upper_ext", jpeg, "JPG"), OK),
        Kind("WebP", _pair("ok_webp", image_bytes("RGB", (300, 300), "WEBP"), "webp"), OK),
        Kind("GIF", _pair("ok_gif", image_bytes("P", (300, 280), "GIF"), "gif"), OK),
        Kind("BMP", _pair("ok_bmp", image_bytes("RGB", (280, 300), "BMP"), "bmp"), OK),
        Kind("TIFF", _pair("ok_tiff", image_bytes("RGB", (300, 300), "TIFF"), "tiff"), OK),
        Kind("PNG bytes named .jpg", _pair("ok_png_named_jpg", image_bytes("RGB", (300, 300), "PNG")), OK),
        Kind("nested directories with directory entries", (_folder("nested"), _folder("nested/dir"),
             *_pair("nested/dir/ok_nested", jpeg)), OK),
        Kind("extreme aspect ratio (2600 x 256)", _pair("ok_wide", image_bytes("RGB", (2600, 256))), OK),
        Kind("caption of 50,000 characters", _pair("ok_long_caption", jpeg, caption=b"x" * 50_000), OK),
        Kind("caption with BOM, NUL and emoji", _pair("ok_odd_caption", jpeg, caption="\ufeffa\x00b \U0001F600".encode()), OK),
        # bad inputs
        Kind("random bytes as the image", _pair("bad_random", bytes(range(256)) * 20), SkipReason.UNDECODABLE_IMAGE),
        Kind("HTML page as the image", _pair("bad_html", b"<html><body>404</body></html>"), SkipReason.UNDECODABLE_IMAGE),
        Kind("PNG header, garbage body", _pair("bad_png_body", b"\x89PNG\r\n\x1a\n" + bytes(200), "png"), SkipReason.UNDECODABLE_IMAGE),
        Kind("JPEG truncated mid-scan", _pair("bad_cut_jpeg", jpeg_cut_mid_scan(jpeg)), SkipReason.UNDECODABLE_IMAGE),
        Kind("zero-byte image", _pair("bad_empty_image", b""), SkipReason.EMPTY_IMAGE),
        Kind("short side under image.size", _pair("bad_tiny", image_bytes("RGB", (200, 300))), SkipReason.TOO_SMALL),
        Kind("more pixels than image.max_pixels", _pair("bad_huge", image_bytes("L", (1100, 1000))), SkipReason.TOO_LARGE),
        Kind(f"decompression bomb ({BOMB_SIDE} x {BOMB_SIDE} PNG)", _pair("bad_bomb", png_bomb(), "png"), SkipReason.TOO_LARGE),
        Kind("two images for one key", (("bad_two_images.jpg", jpeg), ("bad_two_images.png", image_bytes("RGB", (300, 300), "PNG")),
                                        ("bad_two_images.txt", b"which one?")), SkipReason.SEVERAL_IMAGES),
        Kind("no caption", (("bad_no_caption.jpg", jpeg),), SkipReason.MISSING_CAPTION),
        Kind("no image (caption and json only)", (("bad_no_image.txt", b"a cat"), ("bad_no_image.json", b"{}")), SkipReason.MISSING_IMAGE),
        Kind("zero-byte caption", _pair("bad_empty_caption", jpeg, caption=b""), SkipReason.EMPTY_CAPTION),
        Kind("whitespace-only caption", _pair("bad_blank_caption", jpeg, caption=" \n\t\u3000".encode()), SkipReason.EMPTY_CAPTION),
        Kind("control-characters-only caption", _pair("bad_control_caption", jpeg, caption=b"\x00\x01\x1b\x7f"), SkipReason.EMPTY_CAPTION),
        Kind("caption not UTF-8", _pair("bad_not_utf8", jpeg, caption="façade".encode("latin-1")), SkipReason.CAPTION_NOT_UTF8),
        Kind("symlink as the image", (_link("bad_symlink.jpg", "/etc/passwd", tarfile.SYMTYPE), ("bad_symlink.txt", b"a cat")),
             SkipReason.LINK_MEMBER),
        Kind("hard link as the image", (_link("bad_hardlink.jpg", "ok_rgb.jpg", tarfile.LNKTYPE), ("bad_hardlink.txt", b"a cat")),
             SkipReason.LINK_MEMBER),
        Kind("../ in member names", _pair("../../bad_escape", jpeg), SkipReason.UNSAFE_NAME),
        Kind("absolute member names", _pair(f"{outside}/bad_absolute", jpeg), SkipReason.UNSAFE_NAME),
        Kind("key seen again later in the tar", _pair("ok_rgb", jpeg), SkipReason.DUPLICATE_KEY),
        Kind("the same member twice in a row", (*_pair("bad_twice", jpeg), ("bad_twice.txt", b"again")), SkipReason.DUPLICATE_KEY,
             first_kept=True),
    ]


def tar_kinds() -> list[TarKind]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(4):
            add(tar, f"t{i}.jpg", image_bytes("RGB", (300 + i, 300)))
            add(tar, f"t{i}.txt", b"caption %d" % i)
    whole = buf.getvalue()
    return [
        TarKind("tar cut inside a member", "truncated.tar", whole[: whole.index(b"t3.jpg") + 1500],
                SkipReason.TRUNCATED_TAR, ("t0", "t1", "t2")),
        TarKind("zero-byte tar", "empty.tar", b"", SkipReason.TRUNCATED_TAR),
        TarKind("gzip-compressed tar", "gzipped.tar", gzip.compress(whole, mtime=0), SkipReason.COMPRESSED_TAR),
    ]


@dataclass
class Catalogue:
    samples: list[Kind]
    tars: list[TarKind]
    kept_keys: list[str]
    """Keys of the valid controls, in tar order (what ``catalogue.zarr`` must hold)."""
    skipped: Counter
    """Expected skip counts of the whole run (all stores)."""

    @property
    def bad_kinds(self) -> int:
        return sum(k.expected != OK for k in self.samples) + len(self.tars)

    @property
    def valid_controls(self) -> int:
        return sum(k.expected == OK for k in self.samples)


def write_catalogue(directory: Path, outside: Path) -> Catalogue:
    """``catalogue.tar`` (every sample-level kind) and one tar per tar-level kind, in ``directory``."""
    directory.mkdir(parents=True)
    samples = sample_kinds(outside)
    with tarfile.open(directory / "catalogue.tar", "w") as tar:
        for kind in samples:
            for member in kind.members:
                if isinstance(member, tarfile.TarInfo):
                    tar.addfile(member)
                else:
                    add(tar, *member)
    tars = tar_kinds()
    for kind in tars:
        (directory / kind.file).write_bytes(kind.data)
    skipped = Counter(str(k.expected) for k in samples if k.expected != OK)
    skipped.update(str(k.expected) for k in tars)
    return Catalogue(samples, tars, [k.key for k in samples if k.expected == OK or k.first_kept], skipped)
