"""Stage 2 on real Stage 1 datasets (tiny encoders): one training step (each side's production
``train_step``: ours TorchTitan's ``Trainer.train_step`` with ``global_valid_tokens``) gives the loss,
gradients and updated parameters of TorchTitan's own online Flux step on the same raw samples —
``torch.equal``, on float32 and on bfloat16 stores, at prompt dropout 0.447, at world size 1 and 2
(torchrun, gloo) — and corrupting any input breaks that; and
``sbatch slurm/train.sbatch`` trains on two nodes."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import torch
from fidelity import CORRUPTIONS, comparable_samples, compare_step
from test_stage1_pipeline import TINY_CONFIG as ENCODE_TINY_CONFIG
from test_stage2_helpers import REPO_ROOT, TINY_CONFIG, TORCHRUN, run_stage2, torchrun_env

from fixtures import write_sample_tars
from stage1_encode.config import load_config
from stage1_encode.pipeline import Task, run_task
from stage2_train.data.ledger import read_ledger

pytest_plugins = ["fixtures_assets"]

BATCH = 4
"""Samples per data-parallel rank in each compared step."""


def _encode(tiny_assets: Path, root: Path, storage_dtype: str) -> tuple[Path, Path]:
    """(tars, dataset): 2 CC12M-style tars of 16 samples encoded by Stage 1 (float32 compute on CPU)."""
    write_sample_tars(root / "tars", shards=2, per_shard=16, seed=0)
    config = load_config(ENCODE_TINY_CONFIG, [("storage.dtype", storage_dtype)])
    run_task(config, Task(str(root / "tars"), root / "ds", tiny_assets))
    return root / "tars", root / "ds"


@pytest.fixture(scope="module")
def stage1(tiny_assets, tmp_path_factory) -> tuple[Path, Path]:
    return _encode(tiny_assets, tmp_path_factory.mktemp("stage2-on-stage1"), "float32")


@pytest.fixture(scope="module")
def stage1_bf16(tiny_assets, tmp_path_factory) -> tuple[Path, Path]:
    return _encode(tiny_assets, tmp_path_factory.mktemp("stage2-on-stage1-bf16"), "bfloat16")


def _first_usable(tars: Path, root: Path, n: int) -> list[int]:
    _, _, meta, usable = comparable_samples(tars, root)
    assert len(usable) >= n and any(meta[i]["crop_box"][0] or meta[i]["crop_box"][1] for i in usable[:n])
    return usable[:n]


@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
def test_one_step_equals_torchtitans_online_step(one_rank_group, request, tiny_assets, tmp_path, storage):
    """Exact: the loss and every gradient ``torch.equal``. A bfloat16 store is compared with the online
    step whose T5, CLIP and AE-moment outputs are rounded to bfloat16 (what Stage 1 stores), not with
    bfloat16 encoder arithmetic: Stage 1 on CPU computes in float32 and rounds on storing."""
    tars, root = request.getfixturevalue("stage1" if storage == "float32" else "stage1_bf16")
    result = compare_step(tars, root, tiny_assets, tmp_path, _first_usable(tars, root, BATCH))
    # Dropout 0.447 both drops and keeps T5, and CLIP, in this batch: each path's dropout is exercised.
    assert len(set(result.t5_dropped)) == 2 and len(set(result.clip_dropped)) == 2, result
    assert result.global_valid_tokens == [BATCH], result  # the production branch: train_step's sample count
    assert result.loss_equal and result.grads_equal and result.params_equal, result


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_a_corrupted_input_breaks_the_equality(one_rank_group, stage1, tiny_assets, tmp_path, corrupt):
    """The check above is sensitive to every input: each sample given its neighbour's stored T5, CLIP, AE
    mean or log-variance, or a caption with two words more, and the loss itself is no longer equal."""
    tars, root = stage1
    result = compare_step(tars, root, tiny_assets, tmp_path, _first_usable(tars, root, BATCH), corrupt=corrupt)
    assert not result.loss_equal and not result.grads_equal, result
    assert result.loss_rel_error > 1e-7, result


def test_one_step_equals_torchtitans_online_step_at_world_size_2(stage1, tiny_assets, tmp_path):
    """torchrun, 2 processes, gloo: each rank its own samples and dropout draws; the loss divides by the
    latents of both ranks (a collective); gradients summed over ranks. The ranks compute with the
    threads Stage 1 encoded with (here: this process's), or the online encoders differ in the last bit."""
    tars, root = stage1
    out = tmp_path / "fidelity.json"
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(REPO_ROOT / "tests" / "fidelity_worker.py")]
    proc = subprocess.run(
        [*command, str(tars), str(root), str(tiny_assets), str(tmp_path), str(out), str(BATCH), str(torch.get_num_threads())],
        cwd=REPO_ROOT, env={**torchrun_env(), "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'tests'}"},
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = json.loads(out.read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["samples"] != ranks[1]["samples"] and ranks[0]["our_loss"] != ranks[1]["our_loss"]
    assert all(r["global_valid_tokens"] == [2 * BATCH] for r in ranks), ranks  # counted over both ranks
    assert all(r["loss_equal"] and r["grads_equal"] and r["params_equal"] for r in ranks), ranks
    assert any(any(r["t5_dropped"]) for r in ranks) and not all(all(r["t5_dropped"]) for r in ranks), ranks


def test_a_compact_stage1_dataset_trains_in_stage2(tiny_assets, tmp_path):
    """Compact text end to end: Stage 1's masked T5 (tiny real encoders) stores lengths, and Stage 2,
    started by torchrun on 2 ranks, trains on it in the compact mode (its log line) to finite losses."""
    write_sample_tars(tmp_path / "tars", shards=1, per_shard=16, seed=0)
    run_task(load_config(ENCODE_TINY_CONFIG, [("text.mode", "compact")]), Task(str(tmp_path / "tars"), tmp_path / "ds", tiny_assets))
    dump = tmp_path / "run"
    result = run_stage2(2, tmp_path / "ds", dump, "--training.steps", "3", "--training.local_batch_size", "2", "--stage2.sample_ledger")
    assert result.returncode == 0, result.stderr[-6000:]
    assert "compact text: T5 cut per batch to multiples of 64" in result.stdout + result.stderr
    ledger = read_ledger(dump / "ledger" / "rank_0.jsonl")
    assert sorted(ledger) == [1, 2, 3] and all(math.isfinite(entry["loss"]) for entry in ledger.values()), ledger


@pytest.mark.parametrize(("nproc", "shard", "wandb"), [(1, 1, True), (2, 2, False)])
def test_sbatch_trains_hsdp_on_two_nodes(slurm_cluster, stage1, tmp_path, nproc, shard, wandb):
    _, root = stage1
    dump = tmp_path / "run"
    job = slurm_cluster.submit(
        REPO_ROOT / "slurm" / "train.sbatch",
        *("--job.config_file", TINY_CONFIG, "--training.dataset_path", root, "--job.dump_folder", dump),
        *("--training.steps", "10", "--training.local_batch_size", "2"),
        *(["--metrics.enable_wandb"] if wandb else []),
        sbatch_opts=["--output", str(tmp_path / "job.out")],
        env_extra={"NPROC_PER_NODE": str(nproc), "NETRC": str(tmp_path / "no-netrc")},
        timeout=240,
    )
    log = job.log()
    assert job.returncode == 0, log[-6000:]
    assert f"2 node(s) x {nproc} process(es)" in log
    assert f"dp_replicate=2, dp_shard={shard}" in next(dump.glob("logs/job-*-start-1/rank_0.log")).read_text()  # TorchTitan's mesh line
    steps = re.findall(r"step: +(\d+)  loss:\s+(\S+)  grad_norm: .* samples/s/GPU: .* MFU: ", log)
    assert [int(step) for step, _ in steps] == list(range(1, 11)), log[-6000:]  # one line per step, from rank 0
    assert all(math.isfinite(float(loss)) for _, loss in steps)
    assert "tflops:" not in log and log.count("Error running lspci") <= 1
    assert "wandb: offline (no WANDB_API_KEY and no `wandb login` key in netrc); offline files go to" in log
    assert bool(list(dump.glob("tb/*/wandb/offline-run-*"))) == wandb, "offline wandb run (WANDB_MODE from the sbatch)"


def test_sbatch_refuses_an_argument_the_trainer_does_not_take(slurm_cluster, tmp_path):
    """``--dataset`` is preflight's refusal, before srun starts a process (no TorchTitan traceback)."""
    job = slurm_cluster.submit(
        REPO_ROOT / "slurm" / "train.sbatch",
        *("--job.config_file", TINY_CONFIG, "--dataset", tmp_path),
        sbatch_opts=["--output", str(tmp_path / "job.out")],
        env_extra={"NPROC_PER_NODE": "1"},
        timeout=120,
    )
    log = job.log()
    assert job.returncode == 1, log
    assert "--dataset is not an argument of python -m stage2_train; it takes --training.dataset_path DIR" in log
    assert "Traceback" not in log and "torch.distributed.run" not in log and "[titan]" not in log
