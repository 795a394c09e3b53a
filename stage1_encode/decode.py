"""Image bytes -> the square crop TorchTitan's ``_process_cc12m_image`` makes, with a reproducible crop.

Same Pillow calls as TorchTitan (``resize`` with its default filter, ``crop``, ``convert("RGB")``), with
four deliberate, recorded choices (``ImagePolicy.describe``):

* the crop offset is a function of the sample key, not ``torch.randint``: chosen once, reproducibly;
* EXIF orientation is applied, as the HF ``datasets`` Image feature TorchTitan decodes through does;
* palette (``P``/``PA``) and bilevel (``1``) images are converted to a continuous-tone mode *before*
  resizing: Pillow resizes those modes with NEAREST, which TorchTitan gets because it resizes first;
* 16-bit grayscale is scaled to 8 bits (TorchTitan's late ``convert("RGB")`` clips it to white).

Returns pixels as uint8 [3, S, S]; the encoder scales them to [-1, 1] exactly as TorchTitan does.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

from stage1_encode.skips import SkipReason

_ROTATING_ORIENTATIONS = range(2, 9)
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


@dataclass(frozen=True)
class ImagePolicy:
    size: int
    jpeg_draft: bool
    max_pixels: int

    def describe(self) -> dict[str, Any]:
        """The policy as recorded in the dataset identity."""
        return {
            "min_side": self.size,
            "resize": "short side to image_size, long side ceil(image_size / short * long); Pillow's default filter (bicubic)",
            "crop": "square; offset = int.from_bytes(sha256(key)[:8], 'little') % (long - image_size + 1)",
            "exif_orientation": "applied (as HF datasets' Image feature, TorchTitan's decoder)",
            "palette_and_bilevel": "P/PA/1 converted to RGB/RGBA/L before resizing (TorchTitan resizes them with NEAREST)",
            "sixteen_bit_gray": "scaled to 8 bits (>> 8) before resizing (TorchTitan clips to 255)",
            "jpeg_draft": self.jpeg_draft,
            "max_pixels": self.max_pixels,
        }


@dataclass
class Cropped:
    pixels: np.ndarray
    """uint8 [3, size, size], RGB."""
    original_size: tuple[int, int]
    """(width, height) as decoded and oriented, before any draft scaling or resizing."""
    crop_box: tuple[int, int, int, int]
    """(left, top, right, bottom) in the resized image."""


def crop_offset(key: str, span: int) -> int:
    """Offset in ``[0, span]`` drawn uniformly, but reproducibly, from the sample key."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % (span + 1)


def decode_image(data: bytes, key: str, policy: ImagePolicy) -> Cropped | SkipReason:
    """The crop of one image, or the reason it is skipped."""
    if not data:
        return SkipReason.EMPTY_IMAGE
    Image.MAX_IMAGE_PIXELS = policy.max_pixels  # Pillow's own guard stays on, at the configured limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        if img.width * img.height > policy.max_pixels:
            return SkipReason.TOO_LARGE
        orientation = _orientation(img)
        rotated = orientation in _ROTATING_ORIENTATIONS
        original = (img.height, img.width) if orientation in (5, 6, 7, 8) else img.size
        if min(original) < policy.size:
            return SkipReason.TOO_SMALL
        if policy.jpeg_draft and img.format == "JPEG":
            img.draft(None, (policy.size, policy.size))
        img.load()
        if rotated:
            img = ImageOps.exif_transpose(img)
        img = _continuous_tone(img)
        pixels, box = _resize_and_crop(img, policy.size, key)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return SkipReason.TOO_LARGE
    except Exception:  # Pillow signals bad bytes with many types (OSError, SyntaxError, ValueError, …)
        return SkipReason.UNDECODABLE_IMAGE
    return Cropped(pixels, (int(original[0]), int(original[1])), box)


def _orientation(img: Image.Image) -> int | None:
    """EXIF orientation, or None; unreadable EXIF must not cost an otherwise good image."""
    try:
        return img.getexif().get(ExifTags.Base.Orientation)
    except Exception:
        return None


def _continuous_tone(img: Image.Image) -> Image.Image:
    if img.mode in _SIXTEEN_BIT_MODES:
        return Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8))
    if img.mode == "1":
        return img.convert("L")
    if img.mode == "PA" or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA")
    if img.mode == "P":
        return img.convert("RGB")
    return img


def _resize_and_crop(img: Image.Image, size: int, key: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """TorchTitan's ``_process_cc12m_image`` after its size check, with the key-derived offset."""
    width, height = img.size
    if width >= height:
        new_width, new_height = math.ceil(size / height * width), size
        img = img.resize((new_width, new_height))
        left = crop_offset(key, new_width - size)
        box = (left, 0, left + size, size)
    else:
        new_width, new_height = size, math.ceil(size / width * height)
        img = img.resize((new_width, new_height))
        top = crop_offset(key, new_height - size)
        box = (0, top, size, top + size)
    cropped = img.crop(box)
    if cropped.mode != "RGB":
        cropped = cropped.convert("RGB")
    return np.ascontiguousarray(np.asarray(cropped).transpose((2, 0, 1))), box

