"""``python -m shared.inspect_shards``: summary counts, heartbeats, temporaries, --verify on damaged
stores, --show/--key and --grid, on datasets written through the contract (``fixtures.synthetic``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from safetensors.torch import save_file
from torchtitan.models.flux.model.autoencoder import AutoEncoder, AutoEncoderParams

from fixtures.synthetic import write_synthetic_dataset
from shared import checksums, contract, torch_storage
from shared import latent_grid as grid
from shared import progress as summary
from shared.contract import Identity
from shared.heartbeat import Heartbeat, write_heartbeat
from shared.inspect_shards import main
from shared.inspection import report, samples, verify
from shared.store import StoreWriter

TINY_AE = AutoEncoderParams(
    resolution=256, in_channels=3, ch=32, out_ch=3, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=16
)
NOW = 1_800_000_000.0
STORES, SAMPLES_PER_STORE, SAMPLES_PER_SHARD = 50, 6, 4


def tiny_identity(**changes) -> Identity:
    fields = dict(
        t5_max_length=8, t5_dim=16, clip_dim=8, image_size=64, ae_params=dataclasses.asdict(TINY_AE),
        storage_dtype="bfloat16", encoders={}, preprocessing={"min_side": 64}, code_version="test",
    )
    return Identity(**(fields | changes))


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """50 committed stores of 6 samples (two Zarr shards each); copy before changing."""
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("written") / "ds", tiny_identity(), STORES, SAMPLES_PER_STORE, SAMPLES_PER_SHARD
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """4 stores: enough for the statistics' median, quick to verify repeatedly."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("small") / "ds", tiny_identity(), 4, 6, SAMPLES_PER_SHARD)


def copy(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "ds"))


def stores(dataset: Path) -> list[Path]:
    return contract.committed_store_paths(dataset)


def set_attrs(store: Path, **changes) -> None:
    """Change a committed store's root attributes, as a buggy or foreign writer would have left them."""
    group = zarr.open_group(store, mode="r+")
    group.attrs.update(changes)


def rewrite_array(store: Path, name: str, values: np.ndarray) -> None:
    """Replace an array's values *and* its recorded checksum: a store Stage 1 wrote wrongly but
    consistently, which only value checks can catch."""
    array = zarr.open_array(store / name, mode="r+").with_config({"write_empty_chunks": True})
    array[:] = values
    recorded = contract.read_store_attrs(store).checksums | {name: checksums.checksum(values)}
    set_attrs(store, checksums=recorded)


def heartbeat(dataset: Path, index: int, sources: list[str], state: str, age_s: float, **extra) -> None:
    write_heartbeat(dataset, Heartbeat(
        task_index=index, num_tasks=extra.pop("num_tasks", 4), sources=sources, state=state,
        started_at=NOW - 3600, updated_at=NOW - age_s, **extra,
    ))


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().out


def save_tiny_ae(directory: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ae.safetensors"
    save_file({k: v.contiguous() for k, v in AutoEncoder(TINY_AE).state_dict().items()}, str(path))
    return path


# --------------------------------------------------------------------------- summary


def test_summary_counts_match_what_was_written(written, tmp_path, capsys):
    ds = copy(written, tmp_path)
    for store in stores(ds)[:3]:
        set_attrs(store, skipped={"too_small": 2, "decode_error": 1})
    s = summary.summarise(ds)
    assert (s.stores_committed, s.samples) == (STORES, STORES * SAMPLES_PER_STORE)
    assert s.samples_per_store == (SAMPLES_PER_STORE,) * 3
    assert s.skipped == {"too_small": 6, "decode_error": 3}
    assert s.stored_bytes == sum(contract.read_store_attrs(p).stored_bytes for p in stores(ds))
    assert [a["name"] for a in s.arrays] == list(contract.array_specs(tiny_identity()))
    assert (s.verdict, s.stores_expected, s.problems, s.temporaries) == ("UNKNOWN EXTENT", None, [], [])

    code, out = run(capsys, ds)
    assert code == 0
    assert out.splitlines()[0].startswith("UNKNOWN EXTENT: 50 stores, 300 samples")
    assert "too_small 6 · decode_error 3" in out and "16×8×8" in out

    code, out = run(capsys, ds, "--json")
    data = json.loads(out)
    assert code == 0 and data["summary"]["samples"] == 300 and data["summary"]["identity_digest"] == tiny_identity().digest()


def test_complete_when_every_heartbeat_source_is_committed(written, tmp_path, capsys):
    ds = copy(written, tmp_path)
    names = [p.name for p in stores(ds)]
    for i in range(4):
        heartbeat(ds, i, names[i::4], "done", age_s=60)
    code, out = run(capsys, ds)
    assert code == 0 and out.splitlines()[0] == "COMPLETE: 50/50 stores, 300 samples"


def test_tasks_done_running_stale_failed_and_eta(written, tmp_path):
    ds = copy(written, tmp_path)
    names = [p.name for p in stores(ds)]
    for p in stores(ds)[40:]:
        shutil.rmtree(p)  # 10 stores not written yet: 40..49
    heartbeat(ds, 0, names[0:20], "done", age_s=30)
    heartbeat(ds, 1, names[20:44], "running", age_s=5, samples_per_second=2.0, current_source=names[40])
    heartbeat(ds, 2, names[44:48], "running", age_s=3600)
    heartbeat(ds, 3, names[48:50], "failed", age_s=100, message="CUDA error")
    s = summary.summarise(ds, now=NOW)
    states = {t.index: (t.state, t.remaining) for t in s.tasks}
    assert states == {0: ("done", 0), 1: ("running", 4), 2: ("stale", 4), 3: ("failed", 2)}
    assert s.stores_expected == 50 and s.missing == names[40:]
    # 4 stores left x 6 samples per store / 2 samples/s
    assert s.eta_s == pytest.approx(12.0) and s.rate_samples_per_s == 2.0
    assert s.verdict == "IN PROGRESS"
    line = report.headline(s)
    assert line.startswith("IN PROGRESS: 40/50 stores, 240 samples") and "1 task stale" in line and "1 task failed" in line


def test_tasks_not_yet_started_keep_the_dataset_incomplete(written, tmp_path):
    ds = copy(written, tmp_path)
    heartbeat(ds, 0, [p.name for p in stores(ds)], "done", age_s=10, num_tasks=3)
    s = summary.summarise(ds, now=NOW)
    assert (s.verdict, s.tasks_unreported, s.missing) == ("INCOMPLETE", 2, [])


def test_temporaries_are_reported_not_counted(written, tmp_path, capsys):
    ds = copy(written, tmp_path)
    identity = contract.read_identity(ds)
    final = contract.shards_dir(ds) / "synthetic-0050.zarr"
    StoreWriter(final, identity, contract.array_specs(identity), "synthetic-0050.tar", SAMPLES_PER_SHARD)
    s = summary.summarise(ds)
    assert s.stores_committed == STORES
    [tmp] = s.temporaries
    assert tmp.store == final.name and tmp.name.startswith(".synthetic-0050.zarr.tmp-")
    assert "being written" in tmp.status

    heartbeat(ds, 0, [p.name for p in stores(ds)] + [final.name], "running", age_s=0, num_tasks=1)
    [tmp] = summary.summarise(ds).temporaries
    assert tmp.status == "being written by task 0"
    code, out = run(capsys, ds)
    assert re.search(r"^Temporaries +1 ", out, re.M) and "being written by task 0" in out


def test_foreign_and_misnamed_stores_are_rejected(small, tmp_path, capsys):
    ds = copy(small, tmp_path)
    first, second = stores(ds)[:2]
    set_attrs(first, identity_digest="0123456789abcdef")
    set_attrs(second, source="other-0007.tar")
    s = summary.summarise(ds)
    assert s.verdict == "INVALID" and s.stores_committed == 2
    assert {f.where for f in s.problems} == {first.name, second.name}
    code, out = run(capsys, ds, "--verify")
    assert code == 1
    assert "another identity" in out and "other-0007.tar" in out


def test_not_a_dataset_exits_2(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "dataset.json is missing" in capsys.readouterr().err


# --------------------------------------------------------------------------- verify


def test_verify_passes_an_intact_dataset(small, capsys):
    code, out = run(capsys, small, "--verify", "--workers", "2")
    assert code == 0, out
    assert out.splitlines()[1].startswith("VERIFIED: 4 stores, 24 samples re-read")


ARRAY_FILES = {
    "t5": "t5/c/1/0/0",
    "clip": "clip/c/0/0",
    "ae_mean": "ae_mean/c/0/0/0/0",
    "ae_logvar": "ae_logvar/c/1/0/0/0",
    "key": "key/c/0",
    "caption": "caption/c/1",
    "original_size": "original_size/c/0/0",
    "crop_box": "crop_box/c/1/0",
}


@pytest.mark.parametrize("name", ARRAY_FILES)
def test_verify_catches_a_flipped_byte_in_any_chunk(small, tmp_path, capsys, name):
    ds = copy(small, tmp_path)
    victim = stores(ds)[2]
    path = victim / ARRAY_FILES[name]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = verify.verify(ds, workers=2)
    assert [f.where for f in result.findings] == [victim.name]
    assert result.findings[0].what.startswith(f"{name}: ")
    code, out = run(capsys, ds, "--verify", "--workers", "1")
    assert code == 1 and "VERIFY FAILED" in out.splitlines()[1] and victim.name in out


def test_preprocessing_block_says_the_crop_is_fixed_per_sample(small, tmp_path, capsys):
    ds = copy(small, tmp_path)
    meta = json.loads((ds / contract.DATASET_FILE).read_text())
    meta["identity"]["preprocessing"]["crop"] = "square; offset from the key"
    meta["identity_digest"] = contract.Identity.from_dict(meta["identity"]).digest()
    (ds / contract.DATASET_FILE).write_text(json.dumps(meta))
    _, out = run(capsys, ds)  # every store now has another identity: reported, not a crash
    assert out.startswith("INVALID: 0 stores, 0 samples, 4 stores must not be used") and "the crop is fixed per sample at encode time" in out
    for store in stores(ds):
        set_attrs(store, identity_digest=meta["identity_digest"])
    _, out = run(capsys, ds)
    assert out.startswith("UNKNOWN EXTENT: 4 stores"), out
    assert "the crop is fixed per sample at encode time" in out
    _, out = run(capsys, small)
    assert "the crop is fixed per sample" not in out  # no crop recorded, nothing claimed


def test_damaged_source_in_the_headline_with_the_remedy_under_it(small, tmp_path, capsys):
    ds = copy(small, tmp_path)
    victim = stores(ds)[1]
    whole = contract.read_store_attrs(stores(ds)[0]).samples_read
    attrs = contract.read_store_attrs(victim)
    set_attrs(victim, truncated_at_byte=123_456, skipped={"truncated_tar": 1}, num_samples=attrs.num_samples)
    code, out = run(capsys, ds)
    lines = out.splitlines()
    unread = whole - attrs.num_samples
    assert code == 0 and lines[0].startswith(  # no heartbeats in this dataset: its extent is unknown
        f"UNKNOWN EXTENT with 1 damaged source: {attrs.source} cut at byte 123,456, ~{unread} samples unread · 4 stores"
    ), out
    assert lines[1].startswith("  → each damaged store holds the whole samples before its tar's cut. Replace the tar")


def test_verify_puts_the_problem_and_remedy_under_the_headline(small, tmp_path, capsys):
    ds = copy(small, tmp_path)
    victim = stores(ds)[2]
    path = victim / ARRAY_FILES["t5"]  # the store's second Zarr shard
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, out = run(capsys, ds, "--verify", "--workers", "1")
    last = contract.read_store_attrs(victim).num_samples - 1
    lines = out.splitlines()
    assert code == 1 and lines[1].startswith("VERIFY FAILED"), out
    assert lines[2].startswith(f"  problem: {victim.name}: t5: unreadable in samples {SAMPLES_PER_SHARD}..{last} ("), out
    assert lines[3] == f"  → delete the damaged store: rm -r {ds}/shards/{victim.name}", out
    assert lines[4].startswith("    then rerun the same Stage 1 command (sbatch slurm/encode_array.sbatch"), out


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_verify_catches_a_truncated_store(small, tmp_path, damage):
    ds = copy(small, tmp_path)
    victim = stores(ds)[1]
    shard = victim / ARRAY_FILES["t5"]
    if damage == "delete":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    findings = verify.verify(ds, workers=2).findings
    assert [(f.where, f.what.split(":")[0]) for f in findings] == [(victim.name, "t5")]


def test_verify_catches_non_finite_values_with_matching_checksums(small, tmp_path):
    ds = copy(small, tmp_path)
    victim = stores(ds)[0]
    values = zarr.open_group(victim, mode="r")["clip"][:]
    values[3, 5] = torch_storage.to_storage(torch.tensor(float("inf")), "bfloat16")
    rewrite_array(victim, "clip", values)
    [finding] = verify.verify(ds, workers=1).findings
    assert finding.where == victim.name and finding.what.startswith("clip: non-finite values in samples 0..")


@pytest.mark.parametrize("value", [float("nan"), float("-inf"), float("inf"), 3.3e38, -1e-40])
def test_store_writer_refuses_exactly_the_non_finite_bf16_values(tmp_path, value):
    identity = tiny_identity()
    specs = contract.array_specs(identity)
    batch = {
        name: np.zeros((4, *spec.shape), dtype=str if spec.dtype == "str" else spec.dtype) for name, spec in specs.items()
    }
    batch["t5"][2, 1, 3] = torch_storage.to_storage(torch.tensor(value), "bfloat16")
    writer = StoreWriter(tmp_path / "s.zarr", identity, specs, "s.tar", SAMPLES_PER_SHARD)
    if np.isfinite(value):  # the largest finite bf16 and a subnormal are kept
        writer.append(batch)
        writer.commit(skipped={})
        assert contract.read_store_attrs(tmp_path / "s.zarr").num_samples == 4
    else:
        with pytest.raises(contract.ContractError, match="t5: non-finite values in samples 0..3"):
            writer.append(batch)


def test_verify_flags_a_store_of_zeros_by_its_statistics(written, tmp_path, capsys):
    ds = copy(written, tmp_path)
    victim = stores(ds)[17]
    shape = zarr.open_group(victim, mode="r")["ae_mean"].shape
    rewrite_array(victim, "ae_mean", torch_storage.to_storage(torch.zeros(shape), "bfloat16"))
    findings = verify.verify(ds, workers=2).findings
    assert [(f.where, f.what.split(":")[0]) for f in findings] == [(victim.name, "ae_mean")]
    assert "values far from the dataset's" in findings[0].what


def test_missing_expected_stores_fail_verify(small, tmp_path, capsys):
    ds = copy(small, tmp_path)
    heartbeat(ds, 0, [p.name for p in stores(ds)] + ["synthetic-0009.zarr"], "done", age_s=5, num_tasks=1)
    code, out = run(capsys, ds, "--verify", "--workers", "1")
    assert code == 1 and out.startswith("INCOMPLETE: 4/5 stores") and "1 expected stores are missing" in out


# --------------------------------------------------------------------------- samples and grid


def test_show_spreads_samples_over_stores(written, capsys):
    locations = samples.spread(written, 5)
    assert [(p.name, i) for p, i in locations] == [
        ("synthetic-0000.zarr", 0), ("synthetic-0010.zarr", 0), ("synthetic-0020.zarr", 0),
        ("synthetic-0030.zarr", 0), ("synthetic-0040.zarr", 0),
    ]
    code, out = run(capsys, written, "--show", "2")
    assert code == 0 and "synthetic-0025.zarr[0]  key 0025000000" in out
    assert "caption        'synthetic caption 0025000000'" in out and "crop box (left, top, right, bottom) (0, 0, 64, 64)" in out


def test_key_finds_the_sample_and_its_statistics(written, capsys):
    code, out = run(capsys, written, "--key", "0031000005", "--json")
    [sample] = json.loads(out)["samples"]
    assert code == 0 and (sample["store"], sample["index"]) == ("synthetic-0031.zarr", 5)
    stored = zarr.open_group(stores(written)[31], mode="r")["ae_logvar"][5]
    expected = torch_storage.from_storage(stored, "bfloat16").float()
    stats = sample["tensors"]["ae_logvar"]
    assert stats["shape"] == [16, 8, 8] and stats["dtype"] == "bfloat16"
    assert stats["mean"] == pytest.approx(expected.mean().item()) and stats["max"] == expected.max().item()
    assert run(capsys, written, "--key", "no-such-key")[0] == 1


@pytest.fixture(scope="module")
def with_assets(tmp_path_factory) -> tuple[Path, Path]:
    """A dataset whose dataset.json records its assets dir, and whose identity records the AE's hash."""
    root = tmp_path_factory.mktemp("grid")
    ae = save_tiny_ae(root / "assets", seed=0)
    identity = tiny_identity(encoders={"ae": {ae.name: hashlib.sha256(ae.read_bytes()).hexdigest()}})
    contract.write_identity(root / "ds", identity, extra={contract.ASSETS_DIR_KEY: str(ae.parent)})
    return write_synthetic_dataset(root / "ds", identity, 3, 4, SAMPLES_PER_SHARD), root


def test_grid_decodes_latents_into_a_captioned_png(with_assets, capsys):
    ds, root = with_assets
    out = root / "grid.png"
    code, text = run(capsys, ds, "--show", "5", "--grid", out)
    assert code == 0 and "SHA-256 matches the identity" in text
    image = np.asarray(Image.open(out).convert("RGB"))
    assert Image.open(out).size == grid.grid_size(5, 64) and image.shape[1] == 4 * (64 + grid.PAD) + grid.PAD
    first = image[grid.PAD : grid.PAD + 64, grid.PAD : grid.PAD + 64]
    assert first.std() > 10, "decoded image is blank"
    caption_band = image[grid.PAD + 64 : grid.PAD + 64 + 12, grid.PAD : grid.PAD + 64]
    assert (caption_band < 128).any(), "caption not drawn"


def test_grid_refuses_an_ae_the_dataset_was_not_encoded_with(with_assets, tmp_path, capsys):
    ds, _ = with_assets
    other = save_tiny_ae(tmp_path / "other", seed=1)
    assert main([str(ds), "--grid", str(tmp_path / "g.png"), "--ae", str(other)]) == 2
    assert "is not the AE this dataset was encoded with" in capsys.readouterr().err


# --------------------------------------------------------------------------- a dataset Stage 1 made


@pytest.fixture(scope="module")
def stage1_dataset(tmp_path_factory) -> Path:
    """Tiny assets, sample tars (12 inputs, some unusable) and one Stage 1 task, through their CLIs."""
    root = tmp_path_factory.mktemp("stage1")
    repo = Path(__file__).resolve().parent.parent
    commands = [
        ["fixtures", "tiny", "--out", root / "assets"],
        ["fixtures", "sample-data", "--out", root / "tars", "--shards", "3", "--per-shard", "4"],
        ["stage1_encode", "--input", root / "tars", "--output", root / "ds", "--assets", root / "assets",
         "--config", repo / "configs" / "encode_tiny.toml", "--task-index", "0", "--num-tasks", "1"],
    ]
    for command in commands:
        subprocess.run([sys.executable, "-m", *map(str, command)], cwd=repo, check=True, capture_output=True)
    return root / "ds"


def test_a_dataset_made_by_stage1(stage1_dataset, tmp_path, capsys):
    s = summary.summarise(stage1_dataset)
    assert (s.verdict, s.stores_committed, s.stores_expected) == ("COMPLETE", 3, 3)
    assert s.samples + sum(s.skipped.values()) == 12 and s.samples > 0
    assert s.assets_dir == str((stage1_dataset.parent / "assets").resolve())

    out_png = tmp_path / "grid.png"
    code, out = run(capsys, stage1_dataset, "--verify", "--workers", "2", "--show", "3", "--grid", out_png)
    assert code == 0, out
    assert out.splitlines()[0] == f"COMPLETE: 3/3 stores, {s.samples} samples"
    assert out.splitlines()[1].startswith(f"VERIFIED: 3 stores, {s.samples} samples re-read")
    assert "SHA-256 matches the identity" in out
    assert Image.open(out_png).size == grid.grid_size(3, s.identity["image_size"])

    first = stores(stage1_dataset)[0]
    key = str(zarr.open_group(first, mode="r")["key"][0])
    [(path, index)] = samples.find_key(stage1_dataset, key)
    assert (path.name, index) == (first.name, 0)
