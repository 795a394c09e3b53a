"""The loader benchmark's CPU smoke path: the production loader over a small dataset at schnell's real shapes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_stage2_helpers import REPO_ROOT


def test_loader_benchmark_reports_a_workers_cost_and_the_loaders_rate():
    small = ("--workers", "1", "--batch", "2", "--batches", "3", "--repeats", "2", "--stores", "1", "--samples-per-store", "8")
    result = subprocess.run([sys.executable, "-m", "bench.stage2_loader", *small], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    cpu, rate = map(json.loads, result.stdout.splitlines())
    assert cpu["figure"] == "cpu_ms_per_sample" and cpu["value"] > 0
    assert cpu["samples_per_s_per_core"] == pytest.approx(1000 / cpu["value"], rel=0.01)
    # T5 [256, 4096] bf16 alone is 2 MiB raw; random values barely compress
    assert 1_000_000 < cpu["stored_bytes_per_sample"] < 2_300_000
    assert rate["figure"] == "samples_per_s" and rate["workers"] == 1 and len(rate["runs"]) == 2
    assert rate["value"] == pytest.approx(sum(rate["runs"]) / 2, abs=0.1) and rate["value"] > 0
