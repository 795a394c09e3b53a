"""A user's second week (issue #28): every mistake gets one line before the GPUs spin, nothing is silently
ignored, and a 150-step log is one line per step. Stage 1 on the tiny assets, Stage 2 through its own
commands (preflight, ``python -m stage2_train``, ``stage2_train.torchrun``) and the local Slurm cluster."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import write_sample_tars
from shared import heartbeat, inspect_shards
from stage1_encode.config import load_config
from stage1_encode.errors import Stage1Error
from stage1_encode.pipeline import Task, run_task
from stage2_train import preflight
from test_stage1_pipeline import TINY_CONFIG as ENCODE_TINY
from test_stage1_pipeline import run_cli
from test_stage2_helpers import TINY_CONFIG, torchrun_env, write_tiny_dataset

pytest_plugins = ["fixtures_assets"]

REPO = Path(__file__).resolve().parents[1]
STEP = re.compile(r"^\[titan\] .* - step: +\d+ ")
FP8_REFUSAL = (
    "float8 training needs an NVIDIA GPU of compute capability >= 8.9, but this process has no CUDA GPU: "
    'remove "float8" from [model] converters to train in bf16'
)
SMALL = ("--training.img_size", "64", "--encoder.max_t5_encoding_len", "16", "--training.local_batch_size", "1",
         "--training.dataloader.num_workers", "0")  # fmt: skip
"""A 64 px, 16-token dataset: a step in milliseconds, so 150 of them cost seconds."""


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("small") / "ds", stores=1, samples_per_store=160,
                              samples_per_shard=40, image_size=64, t5_max_length=16)


def _fail_rows(capsys, *args: str) -> list[str]:
    """Run Stage 2's preflight; its FAIL rows (exit status 1 when there are any, nothing on stderr)."""
    status = preflight.main(["--job.config_file", *args])
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if re.match(r"^\S[^ ]*( \S+)* +FAIL +", line)]
    assert status == (1 if rows else 0) and err == "", out + err
    return [re.split(r" +FAIL +", row, maxsplit=1)[1] for row in rows]


def test_preflight_refuses_each_mistake_in_one_line_with_the_fix(capsys, small_dataset, tmp_path):
    common = ("--training.dataset_path", str(small_dataset), "--job.dump_folder", str(tmp_path / "out"), *SMALL)
    assert _fail_rows(capsys, str(TINY_CONFIG), *common) == []
    assert _fail_rows(capsys, str(TINY_CONFIG), *common, "--training.local_batch_size", "0") == [
        "training.local_batch_size 0: give each rank at least 1 sample per step"
    ]
    empty = write_tiny_dataset(tmp_path / "empty", stores=2, samples_per_store=0, image_size=64, t5_max_length=16)
    assert _fail_rows(capsys, str(TINY_CONFIG), *common, "--training.dataset_path", str(empty)) == [
        f"dataset {empty} holds 0 samples, fewer than one global batch of 1: see python -m shared.inspect_shards "
        f"{empty} (why Stage 1 kept so few), or lower training.local_batch_size"
    ]
    missing = tmp_path / "nope.toml"
    assert _fail_rows(capsys, str(missing), *common) == [
        f"config file {missing} not found (relative paths start at {Path.cwd()}): give --job.config_file a TOML of "
        "configs/, e.g. configs/flux_schnell.toml"
    ]
    step = tmp_path / "run256" / "checkpoint" / "step-3"
    step.mkdir(parents=True)
    assert _fail_rows(capsys, str(TINY_CONFIG), *common, "--checkpoint.initial_load_path", str(step)) == [
        f"checkpoint.initial_load_path {step} would not be loaded: TorchTitan loads no checkpoint while "
        "[checkpoint] enable is false; add --checkpoint.enable"
    ]
    assert _fail_rows(capsys, str(TINY_CONFIG), *common, "--checkpoint.initial_load_path", str(step),
                      "--checkpoint.enable") == []  # fmt: skip
    assert _fail_rows(capsys, str(TINY_CONFIG), *common, "--model.converters", "float8") == [FP8_REFUSAL]


def test_a_refusal_in_the_job_is_one_line_and_torchruns_summary(small_dataset, tmp_path):
    """Started by hand past preflight: the trainer's one line (every refusal in it), torchrun's own log
    lines and its summary block, which names that line; no traceback anywhere, nothing trained."""
    start_from = tmp_path / "run256" / "checkpoint" / "step-3"
    start_from.mkdir(parents=True)
    refusal = (
        f"checkpoint.initial_load_path {start_from} would not be loaded: TorchTitan loads no checkpoint while "
        f"[checkpoint] enable is false; add --checkpoint.enable; {FP8_REFUSAL}"
    )
    result = subprocess.run(
        [sys.executable, "-m", "stage2_train.torchrun", "--standalone", "--nproc_per_node=1", "-m", "stage2_train",
         "--job.config_file", str(TINY_CONFIG), "--training.dataset_path", str(small_dataset),
         "--job.dump_folder", str(tmp_path / "out"), *SMALL, "--model.converters", "float8",
         "--checkpoint.initial_load_path", str(start_from)],
        cwd=REPO, env=torchrun_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    err = result.stderr.splitlines()
    assert err.count(f"stage2_train: error: {refusal}") == 1, result.stderr
    summary = err.index("=" * 60)
    torchrun_log = re.compile(r"^[EWI]\d{4} [\d:.]+ \d+ \S*torch/distributed/elastic/\S+\] ")
    assert all(torchrun_log.match(line) or not line for line in err[1:summary]), result.stderr
    block = "\n".join(err[summary:])
    assert "stage2_train FAILED" in block and f"traceback : stage2_train: error: {refusal}" in block, block
    assert "Traceback" not in result.stdout + result.stderr
    out = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(out) <= 2 and not any(STEP.match(line) for line in out), result.stdout  # full-log line, "Starting job"


def test_python_m_stage2_train_alone_trains_150_steps_in_a_readable_log(small_dataset, tmp_path):
    """Without torchrun it trains as one process; 150 steps log one line each and a handful besides,
    the third-party rest in the per-rank file it names."""
    result = subprocess.run(
        [sys.executable, "-m", "stage2_train", "--job.config_file", str(TINY_CONFIG), "--training.dataset_path",
         str(small_dataset), "--job.dump_folder", str(tmp_path / "out"), *SMALL, "--training.steps", "150"],
        cwd=tmp_path, env=torchrun_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert sum(bool(STEP.match(line)) for line in lines) == 150
    others = [line for line in lines if line.strip() and not STEP.match(line)]
    assert result.stderr.startswith("stage2_train: not started by torchrun: training as one process")
    assert len(others) <= 8, "\n".join(others)
    full = tmp_path / "out" / "logs" / "local" / "rank_0.log"
    assert any(str(full) in line for line in others)
    assert "Building flux_precomputed flux-tiny" in full.read_text()  # the model config: moved, not lost


# --------------------------------------------------------------------------- Stage 1


def test_idle_rerun_and_a_bad_output_construct_no_encoder(tiny_assets, tmp_path):
    tars = tmp_path / "tars"
    write_sample_tars(tars, shards=2, per_shard=2)
    config = load_config(ENCODE_TINY, [("workers.decode", "0")])
    task = Task(str(tars), tmp_path / "ds", tiny_assets)
    assert run_task(config, task, out=io.StringIO()).stores_committed == 2

    def no_loading(*_: object) -> None:
        raise AssertionError("an encoder or tokenizer was constructed")

    log = io.StringIO()
    again = run_task(config, task, encoders_factory=no_loading, tokenizer_factory=no_loading, out=log)
    assert (again.stores_committed, again.stores_already_there) == (0, 2), log.getvalue()
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    with pytest.raises(Stage1Error, match=f"--output {afile}: {afile} is a file; give a directory"):
        run_task(config, Task(str(tars), afile, tiny_assets), no_loading, no_loading, io.StringIO())
    cli = run_cli(tars, afile, tiny_assets)
    assert cli.returncode == 1 and cli.stdout.strip().splitlines() == [
        f"stage1_encode: error: --output {afile}: {afile} is a file; give a directory (new, or the dataset to add to)"
    ], cli.stdout


def test_inspect_says_starting_until_the_encoders_have_loaded(tiny_assets, tmp_path, capsys):
    tars = tmp_path / "tars"
    write_sample_tars(tars, shards=1, per_shard=2)
    dataset = tmp_path / "ds"

    class Loading(Exception):
        pass

    def encoders_loading(*_: object) -> None:
        assert inspect_shards.main([str(dataset)]) == 0
        raise Loading

    with pytest.raises(Loading):
        run_task(load_config(ENCODE_TINY, [("workers.decode", "0")]), Task(str(tars), dataset, tiny_assets),
                 encoders_loading, out=io.StringIO())  # fmt: skip
    assert capsys.readouterr().out.startswith("STARTING: Stage 1 is starting: 1 of 1 task(s) reported")
    assert [(b.state, b.message) for b in heartbeat.read_heartbeats(dataset)] == [("failed", "Loading: ")]
    assert inspect_shards.main([str(tmp_path / "typo")]) == 2
    assert "if Stage 1 was submitted moments ago" in capsys.readouterr().err


def test_a_task_that_keeps_too_few_samples_ends_non_zero_and_inspect_says_why(tiny_assets, tmp_path, capsys):
    """The demo's tars at 512 px: nearly every image too small -> exit 4 with the reasons and the fix; the
    same tars at twice the size (``sample-data --scale 2``) skip 1 in 8, as CC12M does: exit 0."""
    small, large = tmp_path / "small", tmp_path / "large"
    write_sample_tars(small, shards=1, per_shard=8)
    assert subprocess.run([sys.executable, "-m", "fixtures", "sample-data", "--out", str(large), "--shards", "1",
                           "--per-shard", "8", "--scale", "2"], cwd=REPO, timeout=120).returncode == 0  # fmt: skip
    at_512 = ("--image.size", "512", "--workers.decode", "0")
    few = run_cli(small, tmp_path / "ds_small", tiny_assets, *at_512)
    assert few.returncode == 4, few.stdout
    line = next(line for line in few.stdout.splitlines() if line.startswith("stage1_encode: kept "))
    assert re.fullmatch(
        r"stage1_encode: kept [01] of 8 samples read \(\d+%; too_small: [78]\): most images are smaller than 512 px: "
        r"encode at a smaller --image.size \(e\.g\. a 256 px dataset\) or give larger images; exit status 4", line
    ), line
    assert inspect_shards.main([str(tmp_path / "ds_small")]) == 0
    assert "samples read" in capsys.readouterr().out.splitlines()[0]  # the headline
    normal = run_cli(large, tmp_path / "ds_large", tiny_assets, *at_512)
    assert normal.returncode == 0 and "too_small: 1" in normal.stdout, normal.stdout


# --------------------------------------------------------------------------- on the local Slurm cluster


def test_sbatch_from_another_directory_trains_150_steps_in_a_readable_log(slurm_cluster, small_dataset, tmp_path):
    """Submitted from outside the checkout, ``train.sbatch`` finds its checkout; the job log holds the
    preflight table, one line per step and a handful besides. A FLUX_PROJECT_DIR without a venv: one line."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = ("--job.config_file", TINY_CONFIG, "--training.dataset_path", small_dataset, *SMALL)
    job = slurm_cluster.submit(
        REPO / "slurm" / "train.sbatch", *args, "--job.dump_folder", tmp_path / "out", "--training.steps", "150",
        sbatch_opts=["--nodes=1", "--output", str(tmp_path / "job.out")], env_extra={"NPROC_PER_NODE": "1"},
        cwd=elsewhere, timeout=300,
    )  # fmt: skip
    log = job.log()
    assert job.returncode == 0, log[-6000:]
    lines = [line for line in log.splitlines() if line.strip()]
    assert sum(bool(STEP.match(line)) for line in lines) == 150
    table = lines.index(next(line for line in lines if line.startswith("check "))), lines.index(
        next(line for line in lines if line.startswith("preflight: "))
    )
    others = [line for line in lines[: table[0]] + lines[table[1] + 1 :] if not STEP.match(line)]
    assert len(others) <= 10, "\n".join(others)

    bare = tmp_path / "bare-checkout"
    bare.mkdir()
    job = slurm_cluster.submit(REPO / "slurm" / "train.sbatch", *args, sbatch_opts=["--output", str(tmp_path / "bare.out")],
                               env_extra={"FLUX_PROJECT_DIR": str(bare)}, cwd=elsewhere)  # fmt: skip
    assert job.returncode == 1 and job.log().strip().splitlines() == [
        f"flux-train: no {bare}/.venv/bin/python: run scripts/setup_cluster.sh in the checkout, or export "
        "FLUX_PROJECT_DIR=/path/to/checkout before sbatch"
    ], job.log()
