"""The Stage 2 benchmark's CPU smoke path: both trainers through their own entry points, figures read
back from their metrics records (``[metrics] jsonl_file``), and the report over them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.stage2.figures import SMOOTHING_STEPS, fidelity
from test_stage2_helpers import REPO_ROOT, torchrun_env

STEPS = 3


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.stage2", *args], cwd=REPO_ROOT, env=torchrun_env(),
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_cpu_smoke_times_both_trainers_and_reports(tmp_path):
    out = tmp_path / "figures.jsonl"
    smoke = ("--device", "cpu", "--steps", str(STEPS), "--warmup", "1", "--samples", "16", "--compile-backend", "eager")
    variants = "online,bf16,bf16_accum4"
    result = _bench("timed", "--variants", variants, "--batch", "4", *smoke, "--workdir", str(tmp_path / "work"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    figures = {r["figure"]: r for r in map(json.loads, out.read_text().splitlines())}
    for variant in variants.split(","):
        assert figures[f"{variant}.samples_per_s_per_gpu"]["value"] > 0
        assert figures[f"{variant}.samples_per_s_per_gpu"]["measured_steps"] == STEPS - 1
        assert [step for step, _ in figures[f"{variant}.loss_curve"]["value"]] == list(range(1, STEPS + 1))
        assert figures[f"{variant}.peak_memory_reserved"]["value"] > 0
    # Accumulation: each step trains 4 micro-batches of 4, and samples/s and MFU count all of them.
    accumulated = figures["bf16_accum4.samples_per_s_per_gpu"]
    assert accumulated["micro_batches"] == 4 and accumulated["batch"] == 4
    assert accumulated["value"] == pytest.approx(4 * 4 / accumulated["step_time_s"], rel=1e-3)
    mfu = figures["bf16_accum4.mfu"]
    expected_mfu = 100 * mfu["flops_per_sample"] * accumulated["value"] / mfu["peak_flops"]
    assert mfu["value"] == pytest.approx(expected_mfu, abs=0.006)  # recorded to 2 decimals
    log = (tmp_path / "work" / "logs" / "bf16_accum4-b4.log").read_text()
    assert "global batch size 16, gradient accumulation steps 4" in log
    report = _bench("report", str(out), "--batch", "4")
    assert report.returncode == 0, report.stderr[-4000:]
    assert "bf16_vs_online_equal_batch" in report.stdout


def test_fidelity_compares_smoothed_losses_step_by_step():
    reference = [[step, 2.0] for step in range(1, 41)]
    other = [[step, 2.0 if step < 40 else 2.0 + SMOOTHING_STEPS * 0.1] for step in range(1, 41)]
    f = fidelity(reference, other)
    assert f["max_rel_diff"] == pytest.approx(0.05)  # the last window's mean is 2.1
    assert f["mean_rel_diff"] == pytest.approx(0.05 / (40 - SMOOTHING_STEPS + 1))
    with pytest.raises(ValueError, match="common steps"):
        fidelity(reference[:5], other[:5])
