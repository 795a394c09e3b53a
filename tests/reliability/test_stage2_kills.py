"""Stage 2 fault injection: SIGKILL at random steps and once during a checkpoint save, resubmit, and the
resumed run continues from the last complete checkpoint with exactly the uninterrupted run's samples and
losses; a store damaged on disk stops training with the store named, or is skipped when configured, and
is never trained on."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from test_stage2_helpers import REPO_ROOT, run_stage2, torchrun_command, torchrun_env, write_tiny_dataset
from test_stage2_train import _descendants

STEPS = 20
INTERVAL = 2
KILL_TRIALS = 5
SEED = 7
COMMON = ("--training.steps", str(STEPS), "--stage2.sample_ledger", "--checkpoint.enable",
          "--checkpoint.interval", str(INTERVAL), "--checkpoint.keep_latest_k", "3")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """16 samples in 2 stores of 2 Zarr shards (4 samples each); one process, batch 4: 4 steps an epoch."""
    return write_tiny_dataset(tmp_path_factory.mktemp("s2-data") / "ds", stores=2, samples_per_store=8)


def _save(result: subprocess.CompletedProcess, path: Path) -> str:
    text = result.stdout + result.stderr
    path.write_text(text)
    return text


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> dict[int, dict]:
    dump = tmp_path_factory.mktemp("s2-reference")
    result = run_stage2(1, dataset, dump, *COMMON)
    text = _save(result, dump / "run.log")
    assert result.returncode == 0, text[-6000:]
    ledger = {r["step"]: r for r in _records(dump / "ledger" / "rank_0.jsonl")}
    assert sorted(ledger) == list(range(1, STEPS + 1))
    return ledger


def _complete_checkpoints(dump: Path) -> list[int]:
    folder = dump / "checkpoint"
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("step-*") if (p / ".metadata").exists())


def _start_step(text: str) -> int:
    marker = "Training starts at step "
    assert marker in text, text[-4000:]
    return int(text.split(marker, 1)[1].split()[0].rstrip(",."))


def _same_as_reference(records: list[dict], reference: dict[int, dict]) -> None:
    for rec in records:
        want = reference[rec["step"]]
        assert rec["samples"] == want["samples"], rec["step"]
        assert rec["loss"] == want["loss"], (rec["step"], rec["loss"], want["loss"])


def test_sigkill_at_random_steps_resumes_with_the_same_losses(dataset, reference, tmp_path, tally):
    """KILL_TRIALS consecutive runs in one dump folder, each SIGKILLed (every process) once the ledger
    shows a randomly drawn step; each next run is the resubmission. Every run must start right after the
    newest complete checkpoint and train exactly the reference's samples to exactly its losses."""
    rng = random.Random(SEED)
    dump = tmp_path / "dump"
    ledger = dump / "ledger" / "rank_0.jsonl"
    expected_start, history = 1, []
    for trial in range(KILL_TRIALS + 1):
        final = trial == KILL_TRIALS
        before = len(_records(ledger))
        log_path = tmp_path / f"run-{trial}.log"
        if not final:
            tally.trial("stage2 kill trials")
            target = rng.randint(expected_start, min(expected_start + 3, STEPS - 1))
        with open(log_path, "w") as log:
            proc = subprocess.Popen(torchrun_command(1, dataset, dump, *COMMON), cwd=REPO_ROOT, env=torchrun_env(),
                                    stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 180
            while True:
                new = _records(ledger)[before:]
                if not final and new and new[-1]["step"] >= target:
                    for pid in [proc.pid, *_descendants(proc.pid)]:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    proc.wait()
                    break
                if proc.poll() is not None:
                    break
                assert time.monotonic() < deadline, "stage 2 run hung"
                time.sleep(0.01)
        text = log_path.read_text()
        new = _records(ledger)[before:]
        assert _start_step(text) == expected_start, (trial, history, text[-3000:])
        assert new and new[0]["step"] == expected_start
        assert [r["step"] for r in new] == list(range(expected_start, expected_start + len(new)))
        _same_as_reference(new, reference)
        if final:
            assert proc.returncode == 0, text[-6000:]
            assert new[-1]["step"] == STEPS
        else:
            assert proc.returncode != 0 and new[-1]["step"] < STEPS, "the run finished before it was killed"
            killed_at = new[-1]["step"]
            complete = _complete_checkpoints(dump)
            history.append((expected_start, killed_at, complete))
            expected_start = (max(complete) if complete else 0) + 1
            assert killed_at - 2 * INTERVAL < expected_start - 1 <= killed_at or not complete
            tally.passed("stage2 kill trials")
    final_ledger = {r["step"]: r for r in _records(ledger)}
    assert sorted(final_ledger) == list(range(1, STEPS + 1))
    _same_as_reference(list(final_ledger.values()), reference)
    tally.notes.append(f"stage2 kills (start, killed after step, complete checkpoints): {history}")


def _shard_file(store: Path, array: str, index: int) -> Path:
    return store / array / "c" / str(index) / "0" / "0"


@pytest.mark.parametrize("mode", ["fail", "skip"])
def test_store_damaged_on_disk_is_never_trained_on(mode, dataset, tmp_path, tally):
    """fail: flipped bytes in one sample's chunk -> training stops naming the store, no step trains on it.
    skip: a missing Zarr shard file -> its samples are left out with a warning naming the store."""
    tally.trial("stage2 corrupt-store trials")
    damaged = Path(shutil.copytree(dataset, tmp_path / "ds"))
    store = sorted((damaged / "shards").glob("*.zarr"))[1]
    shard = _shard_file(store, "t5", 0)
    assert shard.is_file(), sorted(str(p) for p in store.rglob("*"))
    if mode == "fail":
        data = bytearray(shard.read_bytes())
        for i in range(64, 96):
            data[i] ^= 0xFF
        shard.write_bytes(bytes(data))
        bad = {8}  # the first chunk of the second store
    else:
        shard.unlink()
        bad = set(range(8, 12))
    dump = tmp_path / "dump"
    result = run_stage2(1, damaged, dump, "--training.steps", "4", "--stage2.sample_ledger",
                        "--stage2.on_corrupt", mode)
    text = _save(result, tmp_path / "run.log")
    trained = [i for r in _records(dump / "ledger" / "rank_0.jsonl") for i in r["samples"]]
    assert not bad & set(trained), f"trained on damaged samples {bad & set(trained)}"
    assert str(store) in text or store.name in text, text[-6000:]
    if mode == "fail":
        assert result.returncode != 0, text[-6000:]
        assert f"stage2_train: error: {store}: cannot read t5[0]" in result.stderr, text[-6000:]
    else:
        assert result.returncode == 0, text[-6000:]
        assert "skipping unreadable data (stage2.on_corrupt = skip; 1 skipped so far)" in text
        assert len(trained) == 16 - len(bad) and set(trained) == set(range(16)) - bad  # 4 steps = one epoch
    tally.passed("stage2 corrupt-store trials")


def _partial_checkpoint(dump: Path, after: int) -> Path | None:
    """A step folder (past step ``after``) that DCP is still writing: present, without the ``.metadata``
    written last."""
    folder = dump / "checkpoint"
    if not folder.is_dir():
        return None
    partial = [p for p in folder.glob("step-*") if int(p.name.split("-")[1]) > after and not (p / ".metadata").exists()]
    return partial[0] if partial else None


def _signal_all(proc: subprocess.Popen, sig: int) -> None:
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def test_sigkill_during_a_checkpoint_save_resumes_from_the_previous_one(dataset, reference, tmp_path, tally):
    """SIGKILL while TorchTitan's DCP save is in progress: caught by a step folder without its
    ``.metadata``, checked again with every process frozen (SIGSTOP). The resubmitted run must ignore
    that partial checkpoint, start after the newest complete one, and reach the reference's losses."""
    tally.trial("stage2 kill trials")
    dump = tmp_path / "dump"
    ledger = dump / "ledger" / "rank_0.jsonl"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(torchrun_command(1, dataset, dump, *COMMON), cwd=REPO_ROOT, env=torchrun_env(),
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        partial = None
        while proc.poll() is None and partial is None:
            assert time.monotonic() < deadline, "stage 2 run hung"
            if (candidate := _partial_checkpoint(dump, after=2 * INTERVAL)) is not None:  # older ones complete
                _signal_all(proc, signal.SIGSTOP)
                if candidate.is_dir() and not (candidate / ".metadata").exists():
                    partial = candidate
                else:
                    _signal_all(proc, signal.SIGCONT)  # the save finished before the freeze: wait for the next
            time.sleep(0.0005)
        _signal_all(proc, signal.SIGKILL)
        proc.wait()
    assert partial is not None, "no checkpoint save was caught in progress before the run ended"
    partial_step = int(partial.name.split("-")[1])
    complete = _complete_checkpoints(dump)
    assert partial_step not in complete and complete and all(s < partial_step for s in complete), (partial_step, complete)
    expected_start = (max(complete) if complete else 0) + 1
    before = len(_records(ledger))
    result = subprocess.run(torchrun_command(1, dataset, dump, *COMMON), cwd=REPO_ROOT, env=torchrun_env(),
                            capture_output=True, text=True, timeout=300)
    text = _save(result, tmp_path / "resumed.log")
    assert result.returncode == 0, text[-6000:]
    assert _start_step(text) == expected_start, (partial_step, complete, text[-3000:])
    new = _records(ledger)[before:]
    assert [r["step"] for r in new] == list(range(expected_start, STEPS + 1))
    _same_as_reference(new, reference)
    tally.notes.append(f"stage2 kill during the save of step {partial_step} (no .metadata yet): resumed at "
                       f"step {expected_start}, losses equal to the uninterrupted run's")
    tally.passed("stage2 kill trials")
