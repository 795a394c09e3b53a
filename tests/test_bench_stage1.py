"""The Stage 1 benchmarks' CPU smoke paths (tiny models): each runs Stage 1's own pipeline end to end and
its figures say what the runs did."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_stage2_helpers import REPO_ROOT


def _figures(module: str, *args: str) -> dict[str, dict]:
    result = subprocess.run([sys.executable, "-m", f"bench.{module}", "--device", "cpu", *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return {r["figure"]: r for r in map(json.loads, result.stdout.splitlines())}


def _assert_ratio_of(ratio: float, numerator: float, denominator: float) -> None:
    """The benchmarks print rates to 2 decimals and ratios to 3, each computed from the unrounded rates; on a
    CPU a rate is ~2 samples/s, so the tolerance is what that rounding can move the ratio, no more."""
    expected = numerator / denominator
    tolerance = expected * (0.005 / numerator + 0.005 / denominator) + 0.0005
    assert ratio == pytest.approx(expected, abs=tolerance)


def test_ladder_benchmark_compares_both_paths_against_their_ceilings():
    figures = _figures("stage1_ladder", "--samples", "16", "--ceiling-batches", "1")
    full, image = figures["full_e2e_samples_per_s"], figures["text_from_e2e_samples_per_s"]
    assert full["image_size"] == 512 and full["samples"] > 0
    _assert_ratio_of(figures["text_from_speedup"]["value"], image["value"], full["value"])
    assert figures["image_arrays_identical"]["value"] == 1
    # The image part stores the AE moments only: a fraction of the full dataset's bytes.
    assert 0 < figures["image_part_bytes_per_sample"]["value"] < figures["full_bytes_per_sample"]["value"]
    ceilings = [figures[f"{name}_ceiling_samples_per_s"]["value"] for name in ("encoders", "text_encoders", "ae")]
    # Only that each was timed: their order is a GPU figure, and on a CPU the tiny AE alone is within noise of all three.
    assert all(c > 0 for c in ceilings)
    assert figures["decode_samples_per_s_per_worker"]["value"] > 0
    for record in figures.values():
        assert {"device", "torch", "commit", "date"} <= record.keys()


def test_encode_benchmark_stores_what_it_encodes():
    figures = _figures("stage1", "--samples", "16", "--samples-per-tar", "10", "--ceiling-batches", "1")
    assert figures["e2e_samples_per_s"]["samples"] > 0 and figures["e2e_samples_per_s"]["tars"] == 2
    assert figures["first_batch_bit_identical"]["value"] == 1
    _assert_ratio_of(figures["e2e_over_ceiling"]["value"], figures["e2e_samples_per_s"]["value"],
                     figures["encoders_ceiling_samples_per_s"]["value"])
    assert figures["bytes_per_sample_on_disk"]["value"] > 0


def test_t5_benchmark_times_each_implementation_and_their_error():
    figures = _figures("stage1_t5", "--models", "tiny", "--batches", "2", "--length", "32", "--iters", "1")
    for impl in ("hf", "fused", "hf_eager_attention"):
        assert figures[f"{impl}.samples_per_s"]["value"] > 0 and figures[f"{impl}.samples_per_s"]["batch"] == 2
        # On the CPU the fused encoder computes what HF's does, so both are as far from float32.
        assert figures[f"{impl}.rms_error"]["value"] >= 0
    assert figures["fused.rms_error"]["value"] == pytest.approx(figures["hf.rms_error"]["value"], rel=0.05)
