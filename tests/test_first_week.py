"""Fast checks of what a new user meets first: train arguments, wandb's mode, the readable log, the
project's help, source fingerprints and Stage 1's ETA (the Slurm tests cover the same paths end to end)."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from shared import contract
from stage1_encode.progress import Progress
from stage1_encode.sources import list_tars
from stage2_train.cli.arguments import argument_problems
from stage2_train.cli.help import project_help
from stage2_train.monitor.log_filter import ReadableLog
from stage2_train.monitor.wandb_mode import decide

REPO = Path(__file__).resolve().parents[1]


def test_train_arguments_refused_with_what_the_trainer_takes():
    assert argument_problems(["--job.config_file", "x.toml", "--training.seed", "-1", "--checkpoint.enable"]) == []
    assert argument_problems(["--dataset", "/d", "--output=/o"]) == [
        "--dataset is not an argument of python -m stage2_train; it takes --training.dataset_path DIR",
        "--output is not an argument of python -m stage2_train; it takes --job.dump_folder DIR",
    ]


def test_wandb_mode_sees_a_wandb_login(tmp_path):
    netrc = tmp_path / "netrc"
    assert decide({"NETRC": str(netrc)})[0] == "offline"
    assert "offline files go to <dump_folder>/" in decide({"NETRC": str(netrc)})[1]
    netrc.write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    netrc.chmod(0o600)
    assert decide({"NETRC": str(netrc)}) == ("online", "wandb: online (a `wandb login` key in netrc)")
    assert decide({"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.org"})[0] == "offline"
    assert decide({"WANDB_API_KEY": "k", "NETRC": str(tmp_path / "none")})[0] == "online"
    assert decide({"WANDB_MODE": "disabled", "WANDB_API_KEY": "k"})[0] == "disabled"


def _record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("root", level, __file__, 1, message, None, None)


def test_readable_log_keeps_one_step_line_and_each_warning_once():
    rank0, rank1 = ReadableLog(0), ReadableLog(1)
    titan = "step:  1  loss:  1.0  grad_norm: 0.1  memory: 0.6GiB  tps: 12  tflops: 0.00  mfu: 0.00%"
    ours = "step:  1  loss:  1.0  grad_norm: 0.1  memory: 0.6GiB  samples/s/GPU: 1.2  MFU: 0.00%"
    assert [rank0.filter(_record(logging.INFO, m)) for m in (titan, ours)] == [False, True]
    warnings = [_record(logging.WARNING, m) for m in ("dataset is small", "loss is NaN", "dataset is small")]
    assert [rank0.filter(r) for r in warnings] == [True, True, False]
    noise = [_record(logging.WARNING, "Error running lspci"), _record(logging.INFO, "Building flux_precomputed {")]
    assert [rank0.filter(r) for r in noise] == [False, False]  # third-party lines: in the per-rank file only
    assert [rank1.filter(r) for r in [_record(logging.INFO, ours), *warnings]] == [False] * 4
    assert rank1.filter(_record(logging.ERROR, "rank 1 failed"))


def test_project_help_lists_the_project_options_briefly():
    result = subprocess.run([sys.executable, "-m", "stage2_train", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text == project_help() + "\n" and len(text.splitlines()) < 100  # TorchTitan's own: ~880 lines
    for option in ("--validation.prompts_path", "--validation.image_freq", "--stage2.on_corrupt", "--training.dataset_path",
                   "--stage2.allow_incomplete_dataset", "--stage2.fsdp_forward_prefetch"):
        assert option in text
    assert "python -m stage2_train --help-torchtitan" in text


def test_fingerprint_changes_with_either_end_and_not_with_mtime(tmp_path):
    tar = tmp_path / "a.tar"
    data = bytes(range(256)) * (3 * 2**20 // 256)
    tar.write_bytes(data)
    first = list_tars(tmp_path)[0].fingerprint()
    tar.touch()
    assert list_tars(tmp_path)[0].fingerprint() == first
    tar.write_bytes(data[:-1] + b"x")
    assert list_tars(tmp_path)[0].fingerprint() != first
    tar.write_bytes(data[: 2 * 2**20])
    assert list_tars(tmp_path)[0].fingerprint().size == 2 * 2**20
    assert first.digest.startswith("ends:")


def test_eta_appears_with_the_first_batch(tmp_path):
    out = io.StringIO()
    progress = Progress(tmp_path, 0, 1, {"a.zarr": 10_000, "b.zarr": 10_000}, 1.0, out)
    progress.report()
    for n in range(10):
        progress.read("a.zarr", 100 * (n + 1))  # 100 bytes per sample
    progress.encoded(8)
    progress.skipped(Counter(too_small=2))
    progress.report()
    first, second = out.getvalue().splitlines()
    assert first.endswith("ETA ?") and not second.endswith("ETA ?")
    assert contract.SourceFingerprint(1, "x").to_dict() == {"size": 1, "digest": "x"}


def test_preflight_help_speaks_to_users(capsys):
    from stage1_encode.preflight import main as encode_preflight
    from stage2_train.preflight import main as train_preflight

    for main in (encode_preflight, train_preflight):
        with pytest.raises(SystemExit) as exit_:
            main(["--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert "Checks in seconds what would fail" in text and "exit status 1 when a check FAILs" in text
        assert "shared." not in text and "``" not in text  # no module names, no docstring markup
