"""Stage 1's CPU parts, without encoders: config, input split, tar reading, image preprocessing against
TorchTitan's own ``_process_cc12m_image`` (fed by HF datasets' decoder, as online), temporaries clean-up."""

import io
import math
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared import contract
from stage1_encode import sources
from stage1_encode.__main__ import parse_args
from stage1_encode.cleanup import remove_stale_temporaries
from stage1_encode.config import ConfigError, EncodeConfig, load_config
from stage1_encode.decode import ImagePolicy, crop_offset, decode_image
from stage1_encode.skips import Skip
from stage1_encode.tars import RawSample, read_tar

REPO = Path(__file__).resolve().parents[1]
POLICY = ImagePolicy(size=256, jpeg_draft=False, max_pixels=89_478_485)


# --------------------------------------------------------------------------- images


def image_bytes(mode: str, size: tuple[int, int], fmt: str = "JPEG", orientation: int | None = None, **save) -> bytes:
    """A non-flat test image: a gradient with a bright block, in ``mode``."""
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    rgb[h // 4 : h // 2, w // 5 : w // 3] = (250, 20, 90)
    img = Image.fromarray(rgb, "RGB")
    if mode == "I;16":
        img = Image.fromarray((np.asarray(img.convert("L")).astype(np.uint16) * 257))
    elif mode == "P":
        img = img.quantize(64)
    elif mode != "RGB":
        img = img.convert(mode)
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save["exif"] = exif.tobytes()
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def torchtitan_pixels(data: bytes, offset: int, monkeypatch) -> torch.Tensor:
    """The online path: HF datasets' Image feature decodes, TorchTitan crops at ``offset``."""
    import datasets
    from torchtitan.models.flux.flux_datasets import _process_cc12m_image

    img = datasets.Image().decode_example({"path": None, "bytes": data})
    with monkeypatch.context() as m:
        m.setattr(torch, "randint", lambda low, high, size: torch.tensor([offset]))
        return _process_cc12m_image(img, output_size=256)


def ours_as_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).float() / 255.0 * 2.0 - 1.0


@pytest.mark.parametrize(
    "mode,size,fmt,orientation",
    [
        ("RGB", (400, 300), "JPEG", None),
        ("RGB", (256, 700), "JPEG", None),
        ("RGB", (256, 256), "PNG", None),
        ("L", (300, 500), "JPEG", None),
        ("CMYK", (333, 280), "JPEG", None),
        ("RGBA", (300, 420), "PNG", None),
        ("LA", (520, 300), "PNG", None),
        ("RGB", (300, 460), "JPEG", 6),
        ("RGB", (470, 290), "JPEG", 3),
        ("RGB", (300, 3000), "WEBP", None),
    ],
)
def test_crop_matches_torchtitan(mode, size, fmt, orientation, monkeypatch):
    data = image_bytes(mode, size, fmt, orientation)
    ours = decode_image(data, "key-1", POLICY)
    assert not isinstance(ours, str), ours
    w, h = size[::-1] if orientation in (5, 6, 7, 8) else size
    assert ours.original_size == (w, h)
    span = math.ceil(256 / min(w, h) * max(w, h)) - 256
    offset = crop_offset("key-1", span)
    assert ours.crop_box == ((offset, 0, offset + 256, 256) if w >= h else (0, offset, 256, offset + 256))
    assert torch.equal(ours_as_tensor(ours.pixels), torchtitan_pixels(data, offset, monkeypatch))


def test_crop_offset_is_reproducible_and_covers_the_range():
    offsets = {crop_offset(f"{i:09d}", 10) for i in range(500)}
    assert offsets == set(range(11))
    assert crop_offset("000000042", 1000) == crop_offset("000000042", 1000)
    assert crop_offset("anything", 0) == 0


def test_palette_and_sixteen_bit_are_converted_before_resizing(monkeypatch):
    """The two deliberate differences: TorchTitan resizes P with NEAREST and clips 16-bit gray to white."""
    palette = image_bytes("P", (400, 300), "PNG")
    ours = decode_image(palette, "k", POLICY)
    rgb = Image.open(io.BytesIO(palette)).convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, "PNG")
    assert np.array_equal(ours.pixels, decode_image(buf.getvalue(), "k", POLICY).pixels)
    online = torchtitan_pixels(palette, max(ours.crop_box[:2]), monkeypatch)
    assert not torch.equal(ours_as_tensor(ours.pixels), online)

    sixteen = image_bytes("I;16", (300, 300), "PNG")
    assert Image.open(io.BytesIO(sixteen)).mode == "I;16"
    gray = decode_image(sixteen, "k", POLICY).pixels
    assert 0 < gray.mean() < 250 and (gray[0] == gray[1]).all()  # scaled, not clipped to white
    assert torchtitan_pixels(sixteen, 0, monkeypatch).mean() > 0.9


def test_jpeg_draft_keeps_the_short_side_and_records_the_true_size():
    data = image_bytes("RGB", (1100, 600))
    drafted = decode_image(data, "k", ImagePolicy(size=256, jpeg_draft=True, max_pixels=10**8))
    assert drafted.original_size == (1100, 600) and drafted.pixels.shape == (3, 256, 256)
    assert not np.array_equal(drafted.pixels, decode_image(data, "k", POLICY).pixels)


# --------------------------------------------------------------------------- tars


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_tar_grouping_duplicates_nesting_and_truncation(tmp_path):
    path = tmp_path / "t.tar"
    big = os.urandom(4000)
    with tarfile.open(path, "w") as tar:
        add(tar, "a.jpg", b"A")
        add(tar, "a.txt", b"cap a")
        add(tar, "a.json", b"{}")
        add(tar, "dir/sub/b.PNG", b"B")
        add(tar, "dir/sub/b.txt", b"cap b")
        add(tar, "a.jpg", b"again")  # the same key again, later
        add(tar, "c.jpg", b"C")
        add(tar, "c.jpg", b"C2")  # the same member twice
        add(tar, "d.txt", b"cap d")
        add(tar, "e.jpg", big)
    items = list(read_tar(path))
    assert items == [
        RawSample("a", {"jpg": b"A", "txt": b"cap a"}),
        RawSample("dir/sub/b", {"png": b"B", "txt": b"cap b"}),
        Skip("a", "duplicate_key"),
        RawSample("c", {"jpg": b"C"}),
        Skip("c", "duplicate_key"),
        RawSample("d", {"txt": b"cap d"}),
        RawSample("e", {"jpg": big}),
    ]
    data = path.read_bytes()
    cut = data.index(big) + 100  # inside the last member's data
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    cut_items = list(read_tar(tmp_path / "cut.tar"))
    assert cut_items[:-1] == items[:-1] and cut_items[-1] == Skip("cut.tar", "truncated_tar")
    # Cut exactly at a member boundary: tarfile sees a clean end; the missing end marker gives it away.
    boundary = data.index(big) - 512
    (tmp_path / "boundary.tar").write_bytes(data[:boundary])
    assert list(read_tar(tmp_path / "boundary.tar"))[-1] == Skip("boundary.tar", "truncated_tar")
    (tmp_path / "empty.tar").write_bytes(b"")
    assert list(read_tar(tmp_path / "empty.tar")) == [Skip("empty.tar", "truncated_tar")]


# --------------------------------------------------------------------------- sources


def test_tasks_cover_every_tar_once(tmp_path):
    for i in range(7):
        (tmp_path / f"cc12m-train-{i:04d}.tar").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a tar")
    tars = sources.list_tars(tmp_path)
    assert tars == sources.list_tars(str(tmp_path / "cc12m-*.tar")) and len(tars) == 7
    assert [t.url for t in tars] == [str(tmp_path / f"cc12m-train-{i:04d}.tar") for i in range(7)]
    for n in (1, 2, 3, 7, 9):
        parts = [sources.task_tars(tars, i, n) for i in range(n)]
        assert sorted((t for part in parts for t in part), key=lambda t: t.name) == tars
        assert parts[0][:2] == tars[0 : 2 * n : n][:2]
    with pytest.raises(sources.SourcesError, match="outside"):
        sources.task_tars(tars, 3, 3)
    with pytest.raises(sources.SourcesError, match="no input tars"):
        sources.list_tars(tmp_path / "nothing-*.tar")


# --------------------------------------------------------------------------- config


def test_production_config_file_equals_the_defaults(monkeypatch):
    assert load_config(REPO / "configs/encode_cc12m.toml") == EncodeConfig()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert EncodeConfig().workers.resolved_decode() == 3  # Slurm's share, not the whole node
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "12")
    assert EncodeConfig().workers.resolved_decode() == 6  # capped: more would starve the store writers
    tiny = load_config(REPO / "configs/encode_tiny.toml", [("batch.size", "16"), ("image.jpeg_draft", "true")])
    assert (tiny.storage.dtype, tiny.batch.size, tiny.image.jpeg_draft) == ("float32", 16, True)


@pytest.mark.parametrize(
    "toml,overrides,message",
    [
        ("[imagez]\nsize = 256\n", [], "unknown config section"),
        ("[image]\nsise = 256\n", [], "unknown config key image.sise"),
        ('[image]\nsize = "big"\n', [], "image.size must be int"),
        ("[batch]\nt5 = 3\n", [], "batch.t5 must divide"),
        ("", [("storage.dtype", "float16")], "storage.dtype must be one of"),
        ("", [("image.jpeg_draft", "maybe")], "must be true or false"),
        ("", [("workers.decode", "many")], "workers.decode must be int"),
        ("[image\n", [], "cannot read config"),
    ],
)
def test_bad_config_is_refused(tmp_path, toml, overrides, message):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path, overrides)


def test_cli_reports_config_errors_before_any_work(tmp_path, capsys):
    base = ["--input", str(tmp_path), "--output", str(tmp_path / "ds"), "--assets", str(tmp_path)]
    args, config = parse_args([*base, "--batch.size", "512", "--encoders.compile=off"])
    assert (config.batch.size, config.encoders.compile, args.num_tasks) == (512, "off", 1)
    for extra in (["--batch.sise", "8"], ["--bogus"], ["--batch.size"]):
        with pytest.raises(SystemExit) as exc:
            parse_args([*base, *extra])
        assert exc.value.code == 2
    assert "unknown config key batch.sise" in capsys.readouterr().err
    proc = subprocess.run(
        [sys.executable, "-m", "stage1_encode", *base, "--storage.dtype", "fp8"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "storage.dtype must be one of" in proc.stderr
    assert not (tmp_path / "ds").exists()


# --------------------------------------------------------------------------- temporaries


def test_only_abandoned_temporaries_are_removed(tmp_path):
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    names = {
        "dead": contract.temporary_name("a.zarr", f"{host}-{dead_pid}-abc123"),
        "alive": contract.temporary_name("a.zarr", f"{host}-{os.getpid()}-abc123"),
        "other_host_fresh": contract.temporary_name("a.zarr", "elsewhere-1-abc123"),
        "other_host_old": contract.temporary_name("a.zarr", "elsewhere-2-abc123"),
        "not_ours": contract.temporary_name("b.zarr", f"{host}-{dead_pid}-abc123"),
    }
    for name in names.values():
        (tmp_path / name / "t5").mkdir(parents=True)
        (tmp_path / name / "t5" / "chunk").write_bytes(b"x")
    old = time.time() - 7200
    for p in [tmp_path / names["other_host_old"], *(tmp_path / names["other_host_old"]).rglob("*")]:
        os.utime(p, (old, old))
    removed = remove_stale_temporaries(tmp_path, {"a.zarr"}, stale_after_s=3600)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["other_host_old"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names["alive"], names["other_host_fresh"], names["not_ours"]]
    )
