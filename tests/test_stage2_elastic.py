"""Stage 2 over a cluster's week, without Slurm: a global sample order any world size resumes, stores
pinned in the checkpoint while Stage 1 adds more, new runs refused on an unfinished dataset, and FSDP2
prefetch knobs. The Slurm side (time-limit signal, requeue, 2 -> 1 -> 2 nodes) is test_stage2_requeue.py."""

from __future__ import annotations

import dataclasses
import itertools
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_stage2_helpers import REPO_ROOT, parse_job_config, run_stage2, write_tiny_dataset
from torch.distributed.device_mesh import init_device_mesh
from torchtitan.models.flux import FluxModel
from torchtitan.models.flux.infra.parallelize import apply_fsdp

from shared import contract
from shared.contract import ContractError
from shared.heartbeat import Heartbeat, write_heartbeat
from stage2_train.data.extent import incomplete_dataset_refusal
from stage2_train.data.ledger import read_ledger
from stage2_train.data.loader import build_precomputed_dataloader
from stage2_train.data.sampler import epoch_order
from stage2_train.infra.parallelize import _blocks, apply_fsdp_schedule
from stage2_train.model.flavors import FLAVORS
from stage2_train.preflight import main as preflight_main

SAMPLES = 16  # 2 stores x 8


@pytest.fixture()
def dataset(tmp_path) -> Path:
    return write_tiny_dataset(tmp_path / "ds", stores=2, samples_per_store=8)


def _config(dataset: Path, *overrides: str, batch: int = 2):
    return parse_job_config("--training.dataset_path", str(dataset), "--training.local_batch_size", str(batch),
                            "--training.dataloader.num_workers", "1", *overrides)


def _indices(loader, steps: int) -> list[list[int]]:
    return [labels.tolist() for _, labels in itertools.islice(iter(loader), steps)]


def _global_steps(loaders, steps: int) -> list[list[int]]:
    per_rank = [_indices(loader, steps) for loader in loaders]
    return [[i for rank in per_rank for i in rank[step]] for step in range(steps)]


# --------------------------------------------------------------------------- elastic sample order


def test_checkpointed_order_is_global_and_resumes_on_any_world_size(dataset):
    """2 ranks x 2 train 3 steps (12 of 16 samples); every rank's state is the same and names the global
    position, so 1 rank x 2 and 4 ranks x 1 both continue with samples 12.. of the same permutation."""
    config = _config(dataset)
    loaders = [build_precomputed_dataloader(2, rank, config) for rank in range(2)]
    trained = _global_steps(loaders, 3)
    states = [loader.state_dict() for loader in loaders]
    assert states[0] == states[1]
    order = epoch_order(SAMPLES, 0, 0).tolist()
    assert [i for step in trained for i in step] == order[:12]

    one = build_precomputed_dataloader(1, 0, config)
    one.load_state_dict(states[0])
    assert _global_steps([one], 3) == [order[12:14], order[14:16], epoch_order(SAMPLES, 0, 1).tolist()[:2]]

    four = [build_precomputed_dataloader(4, rank, _config(dataset, batch=1)) for rank in range(4)]
    for loader in four:
        loader.load_state_dict(states[0])
    assert _global_steps(four, 1) == [order[12:16]]


def test_another_seed_or_dataset_is_refused(dataset, tmp_path):
    loader = build_precomputed_dataloader(1, 0, _config(dataset))
    _indices(loader, 1)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="stage2.seed 0 .* this run has seed 1"):
        build_precomputed_dataloader(1, 0, _config(dataset, "--stage2.seed", "1")).load_state_dict(state)
    other = write_tiny_dataset(tmp_path / "other", stores=2, samples_per_store=8, code_version="other")
    with pytest.raises(ValueError, match="exclude_from_loading dataloader"):
        build_precomputed_dataloader(1, 0, _config(other)).load_state_dict(state)


def test_resume_keeps_the_pinned_stores_unless_refreshed(dataset):
    """Stage 1 commits a third store after the checkpoint: the resume trains on the two pinned ones;
    with stage2.dataset_refresh the next epoch covers all three; a pinned store that lost samples stops it."""
    loader = build_precomputed_dataloader(1, 0, _config(dataset, batch=4))
    _indices(loader, 3)  # 12 of 16
    state = loader.state_dict()
    write_tiny_dataset(dataset, stores=3, samples_per_store=8)

    pinned = build_precomputed_dataloader(1, 0, _config(dataset, batch=4))
    assert len(pinned.dataset) == 24
    pinned.load_state_dict(state)
    assert len(pinned.dataset) == SAMPLES
    assert _indices(pinned, 2) == [epoch_order(SAMPLES, 0, 0).tolist()[12:16], epoch_order(SAMPLES, 0, 1).tolist()[:4]]

    refreshed = build_precomputed_dataloader(1, 0, _config(dataset, "--stage2.dataset_refresh", batch=4))
    refreshed.load_state_dict(state)
    assert _indices(refreshed, 1) == [epoch_order(24, 0, 1).tolist()[:4]]

    shutil.rmtree(contract.shards_dir(dataset) / "synthetic-0001.zarr")
    write_tiny_dataset(dataset, stores=2, samples_per_store=4)  # synthetic-0001 again, with 4 samples
    with pytest.raises(ContractError, match=r"synthetic-0001.zarr \(8 samples pinned, 4 now\)"):
        build_precomputed_dataloader(1, 0, _config(dataset, batch=4)).load_state_dict(state)


# --------------------------------------------------------------------------- incomplete datasets


def _heartbeat(dataset: Path, task: int, stores: list[int], state: str) -> None:
    now = time.time()
    sources = [f"synthetic-{i:04d}.zarr" for i in stores]
    write_heartbeat(dataset, Heartbeat(task, 2, sources, state, now - 60, now))


def test_a_process_with_an_open_loader_still_exits(dataset):
    """The loader's workers ignore SIGTERM (an agreed stop must not lose them), and multiprocessing ends
    daemonic children at exit with SIGTERM: an iterator left open must not hang the interpreter's exit."""
    script = (
        "from stage2_train.data.loader import build_precomputed_dataloader\n"
        "from test_stage2_helpers import parse_job_config\n"
        f"config = parse_job_config('--training.dataset_path', {str(dataset)!r}, '--training.dataloader.num_workers', '2')\n"
        "batches = iter(build_precomputed_dataloader(1, 0, config))\n"
        "next(batches)\n"
    )
    env = {"PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'tests'}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_new_run_on_unfinished_dataset_is_refused_naming_the_missing_tars(dataset, tmp_path, capsys):
    """Stage 1 was given 4 tars: task 0 finished (its second tar failed), task 1 still runs."""
    _heartbeat(dataset, 0, [0, 2], "done")
    _heartbeat(dataset, 1, [1, 3], "running")
    refusal = incomplete_dataset_refusal(_config(dataset))
    assert refusal == (
        f"dataset {dataset} is incomplete (2 of 4 stores committed; missing the stores of input tars "
        f"synthetic-0002, synthetic-0003; Stage 1 tasks still running: 1): wait for Stage 1 (python -m "
        f"shared.inspect_shards {dataset}), or train on the committed stores with --stage2.allow_incomplete_dataset"
    )
    assert incomplete_dataset_refusal(_config(dataset, "--stage2.allow_incomplete_dataset")) is None
    with pytest.raises(ContractError, match="missing the stores of input tars synthetic-0002, synthetic-0003"):
        build_precomputed_dataloader(1, 0, _config(dataset))
    assert len(build_precomputed_dataloader(1, 0, _config(dataset, "--stage2.allow_incomplete_dataset")).dataset) == 16

    tiny = str(REPO_ROOT / "configs" / "flux_tiny.toml")
    args = ["--job.config_file", tiny, "--training.dataset_path", str(dataset), "--job.dump_folder", str(tmp_path / "dump")]
    assert preflight_main(args) == 1
    out = capsys.readouterr().out
    assert "dataset extent" in out and "FAIL" in out and "synthetic-0002, synthetic-0003" in out

    _heartbeat(dataset, 1, [1, 3], "done")
    write_tiny_dataset(dataset, stores=4, samples_per_store=8)
    assert incomplete_dataset_refusal(_config(dataset)) is None


def test_resume_trains_on_pinned_stores_while_stage1_adds_more(dataset, tmp_path):
    """torchrun, 1 process, batch 4 (4 steps an epoch): 2 steps on the 2 committed stores; then Stage 1
    commits a third and still runs a fourth. A new run is refused; the resume is not, and trains
    exactly the pinned order: the rest of epoch 0, then epoch 1, of 16 samples."""
    common = ("--training.local_batch_size", "4", "--stage2.sample_ledger", "--checkpoint.enable",
              "--checkpoint.interval", "100")
    dump = tmp_path / "run"
    first = run_stage2(1, dataset, dump, *common, "--training.steps", "2")
    assert first.returncode == 0, first.stderr[-4000:]
    write_tiny_dataset(dataset, stores=3, samples_per_store=8)
    _heartbeat(dataset, 0, [0, 1, 2, 3], "running")

    fresh = run_stage2(1, dataset, tmp_path / "fresh", *common, "--training.steps", "2")
    assert fresh.returncode != 0 and "missing the stores of input tars synthetic-0003" in fresh.stdout + fresh.stderr

    resumed = run_stage2(1, dataset, dump, *common, "--training.steps", "6")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "sample order: resuming at epoch 0, sample 8 of 16 in 2 pinned stores" in resumed.stdout + resumed.stderr
    ledger = read_ledger(dump / "ledger" / "rank_0.jsonl")
    epoch0, epoch1 = epoch_order(SAMPLES, 0, 0).tolist(), epoch_order(SAMPLES, 0, 1).tolist()
    want = [epoch0[0:4], epoch0[4:8], epoch0[8:12], epoch0[12:16], epoch1[0:4], epoch1[4:8]]
    assert [ledger[step]["samples"] for step in range(1, 7)] == want
    assert all(math.isfinite(ledger[step]["loss"]) for step in range(1, 7))


# --------------------------------------------------------------------------- FSDP2 prefetch knobs


@pytest.mark.parametrize(("forward", "backward", "reshard"), [(1, 1, True), (2, 3, False), (0, 0, True)])
def test_prefetch_knobs_set_the_blocks_fsdp2_schedule(one_rank_group, dataset, forward, backward, reshard):
    config = _config(dataset, "--stage2.fsdp_forward_prefetch", str(forward),
                     "--stage2.fsdp_backward_prefetch", str(backward),
                     *(() if reshard else ("--stage2.no-fsdp_reshard_after_forward",)))
    model = FluxModel(dataclasses.replace(FLAVORS["flux-tiny"], depth=3, depth_single_blocks=3))  # 6 blocks
    mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("dp_replicate", "fsdp"))
    apply_fsdp(model, mesh, param_dtype=torch.float32, reduce_dtype=torch.float32)
    apply_fsdp_schedule(model, config.stage2)
    blocks = [parent.get_submodule(name) for parent, name in _blocks(model)]
    states = [block._get_fsdp_state() for block in blocks]
    assert len(blocks) == 6
    for i, state in enumerate(states):
        assert state._states_to_forward_prefetch == states[i + 1 : i + 1 + forward]
        assert state._states_to_backward_prefetch == states[max(0, i - backward) : i][::-1]
        assert all((group.post_forward_mesh_info is not None) == reshard for group in state._fsdp_param_groups)


def test_prefetch_knobs_train(dataset, tmp_path):
    dump = tmp_path / "run"
    result = run_stage2(
        2, dataset, dump, "--training.steps", "3", "--stage2.sample_ledger",
        *("--parallelism.data_parallel_replicate_degree", "1", "--parallelism.data_parallel_shard_degree", "2"),
        *("--stage2.fsdp_forward_prefetch", "2", "--stage2.fsdp_backward_prefetch", "2"),
        "--stage2.no-fsdp_reshard_after_forward",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "FSDP2 prefetch: forward 2, backward 2 blocks; reshard after forward: False" in result.stdout + result.stderr
    ledgers = [read_ledger(dump / "ledger" / f"rank_{rank}.jsonl") for rank in range(2)]
    assert all(sorted(ledger) == [1, 2, 3] for ledger in ledgers)
    assert all(math.isfinite(record["loss"]) for ledger in ledgers for record in ledger.values())
