"""``python -m fixtures`` and ``python -m downloads fetch``: tiny assets (dims, determinism), sample CC12M tars, and fetch's refusals."""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from downloads import fetch
from fixtures import sample_data, write_sample_tars
from fixtures.__main__ import main
from shared.ae import autoencoder_params
from stage1_encode import asset_loading

pytest_plugins = ["fixtures_assets"]

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    """``python -m fixtures ARGS`` (``downloads`` for fetch) in a fresh interpreter (or ``python -c CODE ARGS``)."""
    package = "downloads" if args[0] == "fetch" else "fixtures"
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", package, *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- tiny


def test_tiny_dims(tiny_assets):
    """The dims a matching "flux-tiny" transformer hard-codes: CLIP hidden 32, T5 d_model 32, 16 z-channels."""
    t5 = json.loads((tiny_assets / "text_encoder_2" / "config.json").read_text())
    clip = json.loads((tiny_assets / "text_encoder" / "config.json").read_text())
    assert {k: t5[k] for k in ("d_model", "d_kv", "d_ff", "num_layers", "num_heads", "feed_forward_proj")} == dict(
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu"
    )
    assert {k: clip[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                 "max_position_embeddings", "projection_dim")} == dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32,
    )
    t5_tok, clip_tok = asset_loading.load_tokenizers(tiny_assets, t5_max_length=256)
    assert t5["vocab_size"] == len(t5_tok.hf_tokenizer) == 800
    assert clip["vocab_size"] == len(clip_tok.hf_tokenizer) == 1000
    assert clip["eos_token_id"] == clip_tok.hf_tokenizer.eos_token_id == 999
    assert t5_tok.hf_tokenizer.convert_tokens_to_ids(["<pad>", "</s>", "<unk>", "<extra_id_0>", "<extra_id_99>"]) == [
        0, 1, 2, 799, 700
    ]
    params = autoencoder_params(tiny_assets)
    assert (params.ch, params.ch_mult, params.num_res_blocks, params.z_channels) == (32, (1, 1, 1, 1), 1, 16)


def test_tiny_is_deterministic(tiny_assets, tmp_path):
    """A second run with the same seed, through the command line, writes byte-identical files."""
    result = run_cli("tiny", "--out", str(tmp_path / "again"), "--seed", "0")
    assert result.returncode == 0, result.stderr
    assert asset_loading.asset_hashes(tmp_path / "again") == asset_loading.asset_hashes(tiny_assets)
    assert (tmp_path / "again" / "README.md").read_bytes() == (tiny_assets / "README.md").read_bytes()


# --------------------------------------------------------------------------- sample data


def test_sample_tars_read_back(tiny_assets, tmp_path):
    import webdataset as wds
    from PIL import Image

    paths = write_sample_tars(tmp_path, shards=2, per_shard=12, seed=3)
    assert [p.name for p in paths] == ["cc12m-train-0000.tar", "cc12m-train-0001.tar"]
    _, clip_tok = asset_loading.load_tokenizers(tiny_assets, t5_max_length=256)
    seen: Counter = Counter()
    keys = []
    for sample in wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False):
        assert set(sample) >= {"__key__", "jpg", "json", "txt"}
        meta, text = json.loads(sample["json"]), sample["txt"].decode()
        image = Image.open(io.BytesIO(sample["jpg"]))
        image.load()
        assert image.format == "JPEG" and image.size == (meta["width"], meta["height"])
        assert meta["key"] == sample["__key__"] and meta["caption"] == text and text
        keys.append(sample["__key__"])
        seen[image.mode] += 1
        seen["small"] += min(image.size) < 256
        seen["boundary"] += min(image.size) == 256
        seen["oriented"] += image.getexif().get(0x0112, 1) != 1
        seen["long caption"] += len(clip_tok.hf_tokenizer.tokenize(text)) > 75
        seen["wide"] += image.width > 1.4 * image.height
        seen["tall"] += image.height > 1.4 * image.width
        if image.mode == "RGB":
            assert max(image.getextrema(), key=lambda e: e[1] - e[0])[1] - min(image.getextrema())[0] > 64
    assert keys == [f"{i:09d}" for i in range(24)]
    cases = ("RGB", "L", "CMYK", "small", "boundary", "oriented", "long caption", "wide", "tall")
    assert all(seen[k] for k in cases), seen
    assert seen["RGB"] > len(keys) / 2 and seen["small"] < len(keys) / 4


def test_sample_tars_are_deterministic(tmp_path):
    first = write_sample_tars(tmp_path / "a", shards=1, per_shard=10, seed=7)
    second = write_sample_tars(tmp_path / "b", shards=1, per_shard=10, seed=7)
    other = write_sample_tars(tmp_path / "c", shards=1, per_shard=10, seed=8)
    assert first[0].read_bytes() == second[0].read_bytes() != other[0].read_bytes()


def test_sample_data_cli(tmp_path, capsys):
    assert main(["sample-data", "--out", str(tmp_path), "--shards", "3", "--per-shard", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [sample_data.shard_name(i) for i in range(3)]
    assert "3 tars" in capsys.readouterr().out


# --------------------------------------------------------------------------- fetch


def fetch_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return env | {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"} | extra


def test_fetch_without_token(tmp_path):
    result = run_cli("fetch", "--out", str(tmp_path / "assets"), env=fetch_env(tmp_path))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: HF_TOKEN is not set; export a Hugging Face token that can read black-forest-labs/FLUX.1-schnell"
    ]
    assert not (tmp_path / "assets").exists()


def test_fetch_without_network(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "hf_SECRETtoken1234567890"
    env = fetch_env(tmp_path, HF_TOKEN=secret, HF_ENDPOINT=f"http://127.0.0.1:{port}")
    # Free space is whatever this machine has: pretend plenty, so the network is what fails.
    code = ("import sys; import downloads.fetch as f; f.free_bytes = lambda path: 1 << 50; "
            "from downloads.__main__ import main; sys.exit(main(sys.argv[1:]))")
    result = run_cli("fetch", "--out", str(tmp_path / "assets"), env=env, code=code)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach http://127.0.0.1:{port}"), result.stderr
    assert secret not in result.stdout + result.stderr


def test_fetch_checks_disk_space_before_downloading(tmp_path, monkeypatch):
    downloads = []
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setattr(fetch, "free_bytes", lambda path: 4_000_000_000)
    monkeypatch.setattr(fetch, "_download", lambda out, token: downloads.append(out))
    with pytest.raises(fetch.FetchError, match=r"not enough disk space .*: 4\.0 GB free, 10\.6 GB needed"):
        fetch.fetch_assets(tmp_path / "assets")
    assert downloads == []
    # Files already there (an interrupted fetch) count: only the rest (3.3 GB) must fit.
    partial = tmp_path / "assets" / "text_encoder_2" / "model-00001-of-00002.safetensors"
    partial.parent.mkdir(parents=True)
    with open(partial, "wb") as f:
        f.truncate(7_000_000_000)  # sparse: no real disk used
    with pytest.raises(fetch.FetchError, match="not usable"):  # the fake download fetched nothing
        fetch.fetch_assets(tmp_path / "assets")
    assert downloads == [tmp_path / "assets"]


def test_fetch_verifies_and_warms_hash_cache(tiny_assets, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setattr(fetch, "free_bytes", lambda path: 1 << 50)
    no_cache = shutil.ignore_patterns(asset_loading.HASH_CACHE)
    monkeypatch.setattr(fetch, "_download", lambda out, token: shutil.copytree(tiny_assets, out, ignore=no_cache))
    out = fetch.fetch_assets(tmp_path / "assets")
    assert (out / asset_loading.HASH_CACHE).is_file()
    monkeypatch.setattr(fetch, "_download", lambda out, token: (out / "text_encoder" / "config.json").unlink())
    with pytest.raises(fetch.FetchError, match="not usable: .*text_encoder/config.json: missing"):
        fetch.fetch_assets(out)


@pytest.mark.parametrize("command, new", [("tiny", "fixtures tiny"), ("sample-data", "fixtures sample-data"),
                                          ("fetch", "downloads fetch"), ("cc12m", "downloads cc12m")])  # fmt: skip
def test_the_old_assets_command_names_the_new_one_in_one_line(tmp_path, command, new):
    result = subprocess.run([sys.executable, "-m", "shared.assets", command, "--out", str(tmp_path / "x")],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [f"python -m shared.assets {command} moved: use python -m {new}"]
    assert not (tmp_path / "x").exists()
