"""``python -m bench.plan_calibration`` on a small synthetic results file (flux-tiny, CPU): one line per
run with the planner's prediction beside the measurement, and ratio / 10 % / fit agreement derived
from them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_stage2_helpers import REPO_ROOT


def record(figure: str, value: object, batch: int, **extra: object) -> dict:
    return {"benchmark": "stage2_train", "figure": figure, "value": value, "unit": "", "flavor": "flux-tiny",
            "image_size": 256, "batch": batch, "variant": "bf16", "trainer": "ours", "activation_checkpointing": "none",
            "compile_blocks": True, "float8": False, "device": "NVIDIA H200", "date": f"2026-12-07T00:00:0{batch}Z", **extra}  # fmt: skip


def test_calibration_reports_each_run_side_by_side(tmp_path):
    results = tmp_path / "calibration.jsonl"
    lines = [
        record("bf16.samples_per_s_per_gpu", 10.0, 2),
        record("bf16.peak_memory_reserved", 0.03, 2, peak_active_gib=0.02),
        record("bf16.peak_memory_allocated", 0.015, 2),
        record("bf16.status", "oom", 4096),
        record("online.peak_memory_reserved", 50.0, 2, trainer="online"),  # not our trainer: left out
    ]
    results.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, "-m", "bench.plan_calibration", "--results", str(results), "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["batch"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(rows) == [2, 4096]
    fits = rows[2]
    assert fits["measured_peak_allocated_gib"] == 0.015 and fits["measured_kind"] == "allocated"
    assert 0 < fits["predicted_peak_gib"] < 1  # flux-tiny at batch 2: MiB, not GiB
    assert fits["ratio"] == pytest.approx(fits["predicted_peak_gib"] / 0.015, rel=0.01)
    assert fits["within_10pct"] == (abs(fits["predicted_peak_gib"] / 0.015 - 1) <= 0.1)
    assert fits["measured_fits"] and fits["predicted_fits"] and fits["fit_agrees"]
    assert "compiled" in fits["note"]
    oom = rows[4096]  # the synthetic OOM at a batch that fits 140 GiB by far: the disagreement is reported
    assert not oom["measured_fits"] and oom["predicted_fits"] and not oom["fit_agrees"]
