"""Stage 1 end to end on the tiny assets: identity refusal, missing assets, a task
killed mid-store then rerun (bit-identical to an uninterrupted run), and a full disk."""

import hashlib
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import write_sample_tars
from shared import contract, heartbeat
from shared.store import verify_store
from stage1_encode.asset_loading import AssetsError
from stage1_encode.config import load_config
from stage1_encode.errors import Stage1Error
from stage1_encode.pipeline import Task, run_task
from stage1_encode.sources import SourcesError

pytest_plugins = ["fixtures_assets"]

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "encode_tiny.toml"


# --------------------------------------------------------------------------- helpers


def run_cli(inputs: Path, output: Path, assets: Path, *extra: str, limit_file_bytes: int | None = None,
            wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    """``python -m stage1_encode`` in its own session (so a test can kill the whole process group)."""
    cmd = [sys.executable, "-m", "stage1_encode", "--input", str(inputs), "--output", str(output),
           "--assets", str(assets), "--config", str(TINY_CONFIG), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def limit() -> None:
        if limit_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    log = open(output.parent / f"{output.name}-{time.monotonic_ns()}.log", "w+")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=limit)
    if not wait:
        return proc
    proc.wait(timeout=300)
    log.seek(0)
    return subprocess.CompletedProcess(cmd, proc.returncode, log.read())


def identity(dataset: Path) -> contract.Identity:
    return contract.read_identity(dataset)


def verified_stores(dataset: Path) -> dict[str, contract.StoreAttrs]:
    """Every committed store, each checked whole (counts, checksums, shard files)."""
    ident = identity(dataset)
    stores = {}
    for path in contract.committed_store_paths(dataset):
        assert verify_store(path, ident, contract.array_specs(ident)) == [], path
        stores[path.name] = contract.read_store_attrs(path)
    return stores


def fingerprint(store: Path) -> dict[str, str]:
    """SHA-256 of every file of a store; the root metadata without ``written_by`` (host, pid, time)."""
    out = {}
    for path in sorted(p for p in store.rglob("*") if p.is_file()):
        rel = str(path.relative_to(store))
        data = path.read_bytes()
        if rel == "zarr.json":
            meta = json.loads(data)
            meta["attributes"].pop("written_by")
            data = json.dumps(meta, sort_keys=True).encode()
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


# --------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def encoded(tiny_assets, tmp_path_factory):
    """A small dataset encoded in-process (bad inputs: tests/bad_inputs.py, run by tests/reliability)."""
    root = tmp_path_factory.mktemp("encoded")
    write_sample_tars(root / "tars", shards=1, per_shard=4)
    config = load_config(TINY_CONFIG, [("workers.decode", "0")])
    run_task(config, Task(str(root / "tars"), root / "ds", tiny_assets), out=io.StringIO())
    return root / "ds"


def test_a_dataset_with_another_identity_is_refused(encoded, tiny_assets):
    dataset = encoded
    before = sorted(p.relative_to(dataset) for p in dataset.rglob("*"))
    config = load_config(TINY_CONFIG, [("workers.decode", "0"), ("storage.dtype", "bfloat16")])
    with pytest.raises(Stage1Error, match="encoded with another identity") as exc:
        run_task(config, Task(str(dataset.parent / "tars"), dataset, tiny_assets), out=io.StringIO())
    assert "storage_dtype" in str(exc.value) and "\n" not in str(exc.value)
    assert sorted(p.relative_to(dataset) for p in dataset.rglob("*")) == before


def test_missing_assets_fail_before_any_work(tiny_assets, tmp_path):
    assets = Path(shutil.copytree(tiny_assets, tmp_path / "assets"))
    (assets / "text_encoder_2" / "model.safetensors").unlink()
    config = load_config(TINY_CONFIG, [("workers.decode", "0")])
    with pytest.raises(AssetsError, match="text_encoder_2/model.safetensors: missing"):
        run_task(config, Task(str(tmp_path), tmp_path / "ds", assets), out=io.StringIO())
    assert not (tmp_path / "ds").exists()


# --------------------------------------------------------------------------- kill, rerun, full disk


def test_killed_task_reruns_to_bit_identical_stores(tiny_assets, tmp_path):
    tars = tmp_path / "tars"
    write_sample_tars(tars, shards=2, per_shard=10)
    reference = run_cli(tars, tmp_path / "reference", tiny_assets)
    assert reference.returncode == 0, reference.stdout

    dataset = tmp_path / "killed"
    proc = run_cli(tars, dataset, tiny_assets, wait=False)
    shards = contract.shards_dir(dataset)
    deadline = time.monotonic() + 120
    while not any((t / "t5" / "c").is_dir() for t in contract.temporary_store_paths(dataset)):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before a store was half written"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert contract.temporary_store_paths(dataset), "the killed writer's temporary should remain"
    verified_stores(dataset)  # whatever is under a final name is whole

    assert list(Path("/dev/shm").glob(f"stage1enc_{proc.pid}_*")), "the killed task's writer buffers"

    rerun = run_cli(tars, dataset, tiny_assets)
    assert rerun.returncode == 0, rerun.stdout
    assert contract.temporary_store_paths(dataset) == []
    assert not list(Path("/dev/shm").glob(f"stage1enc_{proc.pid}_*")), "orphaned buffers are removed"
    assert sorted(p.name for p in shards.iterdir()) == ["cc12m-train-0000.zarr", "cc12m-train-0001.zarr"]
    ours, theirs = verified_stores(dataset), verified_stores(tmp_path / "reference")
    for name in ours:
        assert ours[name].checksums == theirs[name].checksums
        assert fingerprint(shards / name) == fingerprint(contract.shards_dir(tmp_path / "reference") / name)
    assert fingerprint(dataset / contract.EMPTY_PROMPT_STORE) == fingerprint(
        tmp_path / "reference" / contract.EMPTY_PROMPT_STORE
    )


def test_full_disk_fails_cleanly_and_a_rerun_completes(tiny_assets, tmp_path):
    tars = tmp_path / "tars"
    write_sample_tars(tars, shards=1, per_shard=20)
    dataset = tmp_path / "ds"
    # Small batches (the writers' shared buffers: 4 x 160 KB) but 16-sample Zarr shards: an AE shard file
    # (~17 samples x 64 KB) cannot be written under the 700 KB file size limit; everything else can.
    small = ["--batch.size", "4", "--batch.t5", "4", "--batch.clip", "4", "--batch.ae", "4",
             "--storage.samples_per_shard", "16"]
    full = run_cli(tars, dataset, tiny_assets, *small, limit_file_bytes=700 * 1024)
    assert full.returncode == 1, full.stdout
    errors = [line for line in full.stdout.splitlines() if line.startswith("stage1_encode: error:")]
    assert len(errors) == 1 and "no space left (or file size limit)" in errors[0], full.stdout
    assert contract.committed_store_paths(dataset) == [] and contract.temporary_store_paths(dataset) == []
    assert [p.state for p in heartbeat.read_heartbeats(dataset)] == ["failed"]
    assert "File too large" in heartbeat.read_heartbeats(dataset)[0].message

    rerun = run_cli(tars, dataset, tiny_assets, *small)
    assert rerun.returncode == 0, rerun.stdout
    assert list(verified_stores(dataset)) == ["cc12m-train-0000.zarr"]
    assert [p.state for p in heartbeat.read_heartbeats(dataset)] == ["done"]


# --------------------------------------------------------------------------- streamed input (#10)


@pytest.fixture
def remote_tars(tmp_path):
    """Four tars on a non-local fsspec filesystem (``memory://``): the code path ``hf://`` streams through."""
    import fsspec

    local = tmp_path / "tars"
    write_sample_tars(local, shards=4, per_shard=6)
    fs = fsspec.filesystem("memory")
    root = f"/stream-{tmp_path.name}"
    for tar in sorted(local.iterdir()):
        fs.pipe(f"{root}/{tar.name}", tar.read_bytes())
    fs.pipe(f"{root}/README.md", b"not a tar")
    yield local, f"memory://{root}"
    fs.rm(root, recursive=True)


def test_streamed_input_split_over_tasks_equals_the_local_run(tiny_assets, tmp_path, remote_tars):
    local, url = remote_tars
    config = load_config(TINY_CONFIG, [("workers.decode", "0")])
    run_task(config, Task(str(local), tmp_path / "local", tiny_assets))
    summaries = [run_task(config, Task(url, tmp_path / "streamed", tiny_assets, i, 2)) for i in range(2)]

    assert [s.stores_committed for s in summaries] == [2, 2]  # tars 0, 2 and 1, 3: no overlap, none missed
    ours, theirs = verified_stores(tmp_path / "streamed"), verified_stores(tmp_path / "local")
    assert sorted(ours) == sorted(theirs) == [f"cc12m-train-{i:04d}.zarr" for i in range(4)]
    for name in ours:
        assert ours[name].checksums == theirs[name].checksums and ours[name].source == theirs[name].source


def test_a_truncated_streamed_tar_keeps_its_whole_samples(tiny_assets, tmp_path, remote_tars):
    import fsspec

    _, url = remote_tars
    fs, root = fsspec.core.url_to_fs(url)
    whole = fs.cat(f"{root}/cc12m-train-0003.tar")
    fs.pipe(f"{root}/cc12m-train-0003.tar", whole[: len(whole) * 2 // 3])
    config = load_config(TINY_CONFIG, [("workers.decode", "0")])
    run_task(config, Task(url, tmp_path / "ds", tiny_assets, 3, 4))
    attrs = contract.read_store_attrs(contract.shards_dir(tmp_path / "ds") / "cc12m-train-0003.zarr")
    assert attrs.skipped.get("truncated_tar") == 1 and 0 < attrs.num_samples < 6


def test_an_unreachable_hub_is_one_clear_error(tiny_assets, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # CI has no route to the Hub; offline mode fails the same way, at once
    config = load_config(TINY_CONFIG, [("workers.decode", "0")])
    with pytest.raises(SourcesError, match="hf://datasets/pixparse/cc12m-wds: cannot list the input tars") as caught:
        run_task(config, Task("hf://datasets/pixparse/cc12m-wds", tmp_path / "ds", tiny_assets))
    assert "\n" not in str(caught.value) and not (tmp_path / "ds").exists()
