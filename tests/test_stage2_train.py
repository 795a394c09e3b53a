"""Stage 2 end to end on CPU/gloo: torchrun, 2 processes, the real TorchTitan trainer on a tiny dataset.

Losses and sample indices come from each rank's ledger (``stage2.sample_ledger``): the global loss of
a step is the sum of the ranks' shares, at full precision.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_stage2_helpers import REPO_ROOT, run_stage2, torchrun_command, torchrun_env, write_tiny_dataset

from stage2_train.data.ledger import read_ledger

STEPS = 12
REPLICATE_2 = ("--parallelism.data_parallel_replicate_degree", "2", "--parallelism.data_parallel_shard_degree", "1")
SHARD_2 = ("--parallelism.data_parallel_replicate_degree", "1", "--parallelism.data_parallel_shard_degree", "2")
CHECKPOINTED = ("--checkpoint.enable", "--checkpoint.interval", "4")
ACCUMULATED = ("--training.local_batch_size", "2", "--training.global_batch_size", "8")
"""Gradient accumulation: 2 micro-batches of 2 ranks x 2 per optimizer step, the same global batch of 8."""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """8 samples: each step's global batch (2 ranks x 4) is the whole dataset, so the model can overfit it."""
    return write_tiny_dataset(tmp_path_factory.mktemp("stage2-train") / "ds", stores=2, samples_per_store=4)


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-8000:]}"
    return result


def _ledgers(dump: Path) -> list[dict[int, dict]]:
    return [read_ledger(dump / "ledger" / f"rank_{rank}.jsonl") for rank in range(2)]


def _global_losses(dump: Path) -> dict[int, float]:
    ledgers = _ledgers(dump)
    return {step: sum(ledger[step]["loss"] for ledger in ledgers) for step in ledgers[0]}


@pytest.fixture(scope="module")
def common(dataset, tmp_path_factory) -> tuple[str, ...]:
    """Overrides of every run here, starting all of them from one seed checkpoint: DTensor's random
    init differs between sharded and replicated layouts, and runs are compared across layouts. Every run
    that uses it enables checkpointing: TorchTitan loads no ``initial_load_path`` otherwise."""
    seed = tmp_path_factory.mktemp("seed")
    _ok(run_stage2(1, dataset, seed, "--checkpoint.enable", "--checkpoint.create_seed_checkpoint"))
    return (
        *("--training.steps", str(STEPS), "--stage2.sample_ledger", "--optimizer.lr", "3e-3"),
        *("--checkpoint.initial_load_path", str(seed / "checkpoint" / "step-0")),
    )


@pytest.fixture(scope="module")
def replicated(dataset, common, tmp_path_factory) -> Path:
    dump = tmp_path_factory.mktemp("replicated")
    _ok(run_stage2(2, dataset, dump, *common, *REPLICATE_2, *CHECKPOINTED))
    return dump


@pytest.fixture(scope="module")
def sharded(dataset, common, tmp_path_factory) -> Path:
    dump = tmp_path_factory.mktemp("sharded")
    _ok(run_stage2(2, dataset, dump, *common, *SHARD_2, *CHECKPOINTED))
    return dump


def test_replicated_hsdp_trains_and_overfits(replicated):
    losses = _global_losses(replicated)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(math.isfinite(loss) for loss in losses.values())
    first, last = [losses[s] for s in (1, 2, 3)], [losses[s] for s in (STEPS - 2, STEPS - 1, STEPS)]
    assert sum(last) < 0.9 * sum(first), losses
    assert list((replicated / "tb").glob("*/events.out.tfevents.*")), "no TensorBoard events written"


def test_replicas_are_synchronised_like_sharded_fsdp(replicated, sharded):
    """Same data, seeds and global batch: replicate 2 x shard 1 must train what shard 2 trains
    (stock TorchTitan Flux would not sync replica gradients at all)."""
    replicated_losses, sharded_losses = _global_losses(replicated), _global_losses(sharded)
    for step in range(1, STEPS + 1):
        assert replicated_losses[step] == pytest.approx(sharded_losses[step], rel=1e-5), step
    assert _ledgers(replicated)[1][STEPS]["samples"] == _ledgers(sharded)[1][STEPS]["samples"]


@pytest.fixture(scope="module")
def accumulated(dataset, common, tmp_path_factory) -> Path:
    dump = tmp_path_factory.mktemp("accumulated")
    _ok(run_stage2(2, dataset, dump, *common, *SHARD_2, *CHECKPOINTED, *ACCUMULATED))
    return dump


def test_accumulated_steps_train_the_whole_global_batch_and_overfit(accumulated):
    """Each step: 2 micro-batches per rank, 8 distinct samples over both ranks (the whole dataset)."""
    ledgers = _ledgers(accumulated)
    for step in range(1, STEPS + 1):
        assert [ledger[step]["micro_batches"] for ledger in ledgers] == [2, 2]
        assert sorted(ledgers[0][step]["samples"] + ledgers[1][step]["samples"]) == list(range(8)), step
    losses = _global_losses(accumulated)
    assert all(math.isfinite(loss) for loss in losses.values())
    assert sum(losses[s] for s in (STEPS - 2, STEPS - 1, STEPS)) < 0.9 * sum(losses[s] for s in (1, 2, 3)), losses


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.parametrize("layout", ["sharded", "accumulated"])
def test_killed_run_resumes_with_the_same_samples_and_losses(request, dataset, common, layout, tmp_path):
    """SIGKILL every process of a checkpointed run after step 9 started (last checkpoint: step 8),
    rerun the same command: steps 9.. train the same samples to the same losses as the uninterrupted run
    (accumulated: the kill may fall between a step's micro-batches)."""
    uninterrupted = request.getfixturevalue(layout)
    overrides = (*common, *SHARD_2, *CHECKPOINTED, *(ACCUMULATED if layout == "accumulated" else ()))
    dump = tmp_path / "killed"
    command = torchrun_command(2, dataset, dump, *overrides)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    run = subprocess.Popen(command, cwd=REPO_ROOT, env=torchrun_env(), **quiet)
    ledger = dump / "ledger" / "rank_0.jsonl"
    deadline = time.monotonic() + 180
    while not (ledger.exists() and max(read_ledger(ledger), default=0) >= 9):
        assert run.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
        time.sleep(0.02)
    for pid in [run.pid, *_descendants(run.pid)]:
        os.kill(pid, signal.SIGKILL)
    run.wait()
    killed_at = max(read_ledger(ledger))
    assert killed_at < STEPS and not (dump / "checkpoint" / f"step-{STEPS}").exists()

    resumed = _ok(run_stage2(2, dataset, dump, *overrides))
    assert "Training starts at step 9" in resumed.stdout + resumed.stderr
    for got, want in zip(_ledgers(dump), _ledgers(uninterrupted)):
        for step in range(9, STEPS + 1):
            assert got[step]["samples"] == want[step]["samples"], step
            assert got[step]["loss"] == want[step]["loss"], step


def test_dataset_made_for_another_model_is_refused(tmp_path):
    mismatched = write_tiny_dataset(tmp_path / "ds", stores=1, t5_dim=48)
    result = run_stage2(1, mismatched, tmp_path / "out", "--training.steps", "1")
    assert result.returncode != 0
    assert "does not match model flavor 'flux-tiny'" in result.stderr
    assert "t5_dim = 48, but flavor context_in_dim = 32" in result.stderr
