"""A generated corpus of bad (and odd but good) inputs through Stage 1: every sample is either kept and
encoded or skipped with its reason counted; nothing crashes. Reuses tests/test_stage1_pipeline.py's
corpus (29 kinds plus a truncated and an empty tar) and adds more kinds in a second tar."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import zarr

from shared import contract
from stage1_encode.config import load_config
from stage1_encode.pipeline import Task, run_task
from test_stage1_pipeline import TINY_CONFIG, add, corpus_samples, verified_stores, write_corpus
from test_stage1_units import image_bytes

pytest_plugins = ["fixtures_assets"]


def extra_samples() -> list[tuple[str, list[tarfile.TarInfo | tuple[str, bytes]], str]]:
    """(kind, members, expected outcome): "ok" or the skip reason. Members are (name, bytes) or TarInfo."""
    jpeg = image_bytes("RGB", (300, 300))
    cap = b"a dog on a beach"

    def link(name: str, target: str) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, target
        return info

    def folder(name: str) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        return info

    return [
        ("zero-byte image and caption", [("x_zero_both.jpg", b""), ("x_zero_both.txt", b"")], "empty_caption"),
        ("zero-byte caption member", [("x_zero_txt.jpg", jpeg), ("x_zero_txt.txt", b"")], "empty_caption"),
        ("image under an unknown extension", [("x_exe.exe", jpeg), ("x_exe.txt", cap)], "missing_image"),
        ("jpeg bytes named .png", [("x_jpg_as_png.png", jpeg), ("x_jpg_as_png.txt", cap)], "ok"),
        ("symlink as the image", [link("x_link.jpg", "elsewhere.jpg"), ("x_link.txt", cap)], "missing_image"),
        ("directory entries", [folder("deep"), folder("deep/er"), ("deep/er/x_in_dir.jpg", jpeg),
                               ("deep/er/x_in_dir.txt", cap)], "ok"),
        ("gif", [("x_gif.gif", image_bytes("P", (300, 280), "GIF")), ("x_gif.txt", cap)], "ok"),
        ("bmp", [("x_bmp.bmp", image_bytes("RGB", (280, 300), "BMP")), ("x_bmp.txt", cap)], "ok"),
        ("tiff", [("x_tiff.tiff", image_bytes("RGB", (300, 300), "TIFF")), ("x_tiff.txt", cap)], "ok"),
        ("bilevel (mode 1)", [("x_bilevel.png", image_bytes("1", (300, 300), "PNG")), ("x_bilevel.txt", cap)], "ok"),
        ("gray+alpha", [("x_la.png", image_bytes("LA", (300, 300), "PNG")), ("x_la.txt", cap)], "ok"),
        ("absurdly tall", [("x_tall.jpg", image_bytes("RGB", (256, 3500))), ("x_tall.txt", cap)], "ok"),
        ("1-pixel image", [("x_pixel.png", image_bytes("RGB", (1, 1), "PNG")), ("x_pixel.txt", cap)], "too_small"),
        ("caption of 50k characters", [("x_long.jpg", jpeg), ("x_long.txt", b"x" * 50_000)], "ok"),
        ("caption with BOM, NUL and emoji", [("x_odd_txt.jpg", jpeg),
                                             ("x_odd_txt.txt", "\ufeffa\x00b \U0001F600".encode())], "ok"),
        ("latin-1 caption", [("x_latin1.jpg", jpeg), ("x_latin1.txt", "façade".encode("latin-1"))], "caption_not_utf8"),
        ("html instead of a jpeg", [("x_html.jpg", b"<html><body>404</body></html>"), ("x_html.txt", cap)],
         "undecodable_image"),
        ("png header, garbage body", [("x_badpng.png", b"\x89PNG\r\n\x1a\n" + bytes(200)), ("x_badpng.txt", cap)],
         "undecodable_image"),
        ("two captions for one key", [("x_twice.jpg", jpeg), ("x_twice.txt", cap), ("x_twice.txt", b"again")],
         "duplicate_key"),
    ]


def write_extras(path: Path) -> tuple[list[str], Counter, int]:
    extras = extra_samples()
    with tarfile.open(path, "w") as tar:
        for _kind, members, _expected in extras:
            for member in members:
                if isinstance(member, tarfile.TarInfo):
                    tar.addfile(member)
                else:
                    add(tar, *member)
    keys = []
    for _kind, members, expected in extras:
        if expected == "ok":
            name = next(m[0] for m in members if not isinstance(m, tarfile.TarInfo) and not m[0].endswith(".txt"))
            keys.append(name.rsplit(".", 1)[0])
    # "two captions for one key": the first (image, caption) pair is a sample, the second caption a duplicate.
    keys.insert([k for k, _m, _e in extras].index("two captions for one key"), "x_twice")
    skips = Counter(e for _k, _m, e in extras if e != "ok")
    return keys, skips, len(extras)


@pytest.fixture(scope="module")
def corpus(tiny_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    valid, skips = write_corpus(root / "tars")
    extra_keys, extra_skips, extra_kinds = write_extras(root / "tars" / "extras.tar")
    config = load_config(TINY_CONFIG, [("workers.decode", "0"), ("image.max_pixels", "1000000")])
    log = io.StringIO()
    summary = run_task(config, Task(str(root / "tars"), root / "ds", tiny_assets), out=log)
    kinds = len(corpus_samples()) + 2 + extra_kinds  # + the truncated and the empty tar
    return root / "ds", summary, valid, skips, extra_keys, extra_skips, kinds, log.getvalue()


def test_every_sample_is_kept_or_counted_and_nothing_crashes(corpus, tally):
    dataset, summary, valid, skips, extra_keys, extra_skips, kinds, log = corpus
    for _ in range(kinds):
        tally.trial("bad-input kinds")
    assert summary.skipped == dict(skips + extra_skips), log
    stores = verified_stores(dataset)
    assert sorted(stores) == ["corpus.zarr", "empty.zarr", "extras.zarr", "truncated.zarr"]
    assert stores["extras.zarr"].skipped == dict(extra_skips)
    group = zarr.open_group(contract.shards_dir(dataset) / "extras.zarr", mode="r")
    kept = list(group["key"][:])
    assert kept == extra_keys
    captions = dict(zip(kept, group["caption"][:]))
    assert len(captions["x_long"]) == 50_000 and captions["x_odd_txt"].startswith("\ufeff")
    assert captions["x_twice"] == "a dog on a beach"
    assert list(zarr.open_group(contract.shards_dir(dataset) / "corpus.zarr", mode="r")["key"][:]) == valid
    assert summary.samples == len(valid) + 3 + len(extra_keys)
    tally.passed("bad-input kinds", kinds)
