"""CC12M-style WebDataset tars with real JPEG bytes, for tests and local runs of Stage 1.

Members follow ``pixparse/cc12m-wds`` (img2dataset output): ``{key}.jpg``, ``{key}.json`` and
``{key}.txt`` with 9-digit keys. Images are not blank (gradient, shapes, noise) and cover what Stage 1
must handle; the mix is scheduled by sample index so even one small shard holds every case:

    index % 8 == 3     a side below 256 px (rejected by the 256 px policy)
    index % 11 == 0    short side exactly 256 px (the boundary that is kept)
    index % 7 == 2/5   grayscale ("L") / CMYK JPEG; the rest RGB
    index % 6 == 4     EXIF orientation tag 2..8 (pixels stored unrotated, as cameras write them)
    index % 5 == 1     a long caption, past CLIP's 77 tokens

Everything is a function of (seed, index): files are byte-identical across runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from shared.assets import corpus
from shared.assets.cc12m import shard_name

_ASPECTS = (1.0, 4 / 3, 3 / 2, 16 / 9, 2.0, 3 / 4, 2 / 3, 9 / 16, 1 / 2)
_EXIF_ORIENTATION = 0x0112


def write_sample_tars(out: str | Path, shards: int, per_shard: int, seed: int = 0, scale: int = 1) -> list[Path]:
    """Write ``shards`` tars of ``per_shard`` samples each under ``out``; return their paths in order.
    ``scale`` multiplies every image side (2: CC12M-like tars for a 512 px encode)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        path = out / shard_name(s)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for n in range(s * per_shard, (s + 1) * per_shard):
                for name, data in sample_members(n, seed, scale).items():
                    _add(tar, name, data)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def sample_members(index: int, seed: int = 0, scale: int = 1) -> dict[str, bytes]:
    """The tar members of sample ``index``: ``{key}.jpg``, ``{key}.json``, ``{key}.txt``."""
    key = f"{index:09d}"
    rng = np.random.default_rng([seed, index])
    text = corpus.caption(random.Random(f"{seed}:{index}"), long=index % 5 == 1)
    width, height = (side * scale for side in _size(index, rng))
    mode = "L" if index % 7 == 2 else "CMYK" if index % 7 == 5 else "RGB"
    orientation = int(rng.integers(2, 9)) if index % 6 == 4 else None
    jpg = _jpeg(_pixels(rng, width, height), mode, orientation, quality=int(rng.integers(70, 96)))
    meta = {
        "key": key,
        "url": f"https://images.example.com/cc12m/{key}.jpg",
        "caption": text,
        "status": "success",
        "error_message": None,
        "width": width,
        "height": height,
        "original_width": width,
        "original_height": height,
        "exif": json.dumps({"Image Orientation": orientation} if orientation else {}),
        "sha256": hashlib.sha256(jpg).hexdigest(),
    }
    return {f"{key}.jpg": jpg, f"{key}.json": json.dumps(meta).encode(), f"{key}.txt": text.encode()}


def _size(index: int, rng: np.random.Generator) -> tuple[int, int]:
    if index % 8 == 3:
        short = int(rng.integers(48, 256))
    elif index % 11 == 0:
        short = 256
    else:
        short = int(rng.integers(256, 513))
    aspect = _ASPECTS[int(rng.integers(len(_ASPECTS)))]
    long = min(round(short * max(aspect, 1 / aspect)), 768)
    return (long, short) if aspect >= 1 else (short, long)


def _pixels(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A colour gradient with a few shapes and mild noise: cheap (~2 ms at 640 px), never flat."""
    corners = rng.integers(0, 224, (2, 2, 3), dtype=np.uint8)
    image = Image.fromarray(corners, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (x0, y0, x0 + int(rng.integers(8, width // 2 + 9)), y0 + int(rng.integers(8, height // 2 + 9)))
        colour = tuple(rng.integers(0, 224, 3).tolist())
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    noise = np.frombuffer(rng.bytes(width * height * 3), np.uint8).reshape(height, width, 3) >> 3
    return Image.fromarray(np.asarray(image) + noise, "RGB")


def _jpeg(image: Image.Image, mode: str, orientation: int | None, quality: int) -> bytes:
    buf = io.BytesIO()
    extra = {}
    if orientation:
        exif = Image.Exif()
        exif[_EXIF_ORIENTATION] = orientation
        extra["exif"] = exif.tobytes()
    image.convert(mode).save(buf, "JPEG", quality=quality, **extra)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # fixed, so the tar bytes depend on the content only
    tar.addfile(info, io.BytesIO(data))
