"""The Stage 2 benchmark's CPU smoke path: both trainers through their own entry points, figures read
back from their metrics records (``[metrics] jsonl_file``), and the report over them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_stage2_helpers import REPO_ROOT, torchrun_env

from bench.stage2.figures import SMOOTHING_STEPS, fidelity
from shared.contract import read_identity
from stage2_train.model.flavors import FLAVORS, LATENT_PATCH
from stage2_train.model.flops import flux_training_flops_per_sample, image_tokens

STEPS = 3
TEXT_TOKENS = 256


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.stage2", *args], cwd=REPO_ROOT, env=torchrun_env(),
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_cpu_smoke_times_both_trainers_and_reports(tmp_path):
    out = tmp_path / "figures.jsonl"
    smoke = ("--device", "cpu", "--steps", str(STEPS), "--warmup", "1", "--samples", "16", "--compile-backend", "eager")
    variants = "online,bf16,bf16_accum4,bf16_compact"
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
    step_time = accumulated["step_time_s"]  # recorded to 4 decimals, samples/s to 3: the tolerance is that rounding
    assert accumulated["value"] == pytest.approx(4 * 4 / step_time, abs=0.0005 + 4 * 4 * 0.00005 / step_time**2)
    mfu = figures["bf16_accum4.mfu"]
    expected_mfu = 100 * mfu["flops_per_sample"] * accumulated["value"] / mfu["peak_flops"]
    assert mfu["value"] == pytest.approx(expected_mfu, abs=0.006)  # recorded to 2 decimals
    log = (tmp_path / "work" / "logs" / "bf16_accum4-256px-b4.log").read_text()
    assert "global batch size 16, gradient accumulation steps 4" in log
    assert figures["bf16_compact.samples_per_s_per_gpu"]["text"] == "compact"
    assert "compact text: T5 cut per batch" in (tmp_path / "work" / "logs" / "bf16_compact-256px-b4.log").read_text()
    report = _bench("report", str(out), "--batch", "4")
    assert report.returncode == 0, report.stderr[-4000:]
    assert "bf16_vs_online_equal_batch" in report.stdout


def _tiny_flops(image_size: int, nparams: int) -> int:
    args = FLAVORS["flux-tiny"]
    return flux_training_flops_per_sample(args, nparams, image_tokens(image_size, args.autoencoder_params, LATENT_PATCH) + TEXT_TOKENS)


def test_cpu_smoke_at_512_px_runs_both_trainers_at_that_size(tmp_path):
    """Stage 2 refuses a dataset whose identity's image_size differs from training.img_size, so its run
    finishing shows both got 512; the online trainer's command line must carry it too."""
    out, work = tmp_path / "figures.jsonl", tmp_path / "work"
    smoke = ("--device", "cpu", "--steps", "2", "--warmup", "1", "--samples", "8", "--batch", "2", "--compile-backend", "eager")
    result = _bench("timed", "--image-size", "512", "--variants", "online,bf16", *smoke, "--workdir", str(work), "--out", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    figures = {r["figure"]: r for r in records}
    assert {r["image_size"] for r in records} == {512}
    nparams = records[0]["params"]
    assert {r["flops_per_sample"] for r in records} == {_tiny_flops(512, nparams)}
    assert _tiny_flops(512, nparams) > _tiny_flops(256, nparams)
    for variant in ("online", "bf16"):
        assert figures[f"{variant}.samples_per_s_per_gpu"]["value"] > 0
        assert "--training.img_size 512" in (work / "logs" / f"{variant}-512px-b2.log").read_text().splitlines()[0]
    # TorchTitan's loader skips images smaller than 512 px: the scaled tars lose one sample in eight
    # (the generator's too-small ones; 2 steps x 2 samples read fewer than 8), unscaled ones nearly all.
    assert (work / "logs" / "online-512px-b2.log").read_text().count("Low quality image") <= 1
    assert read_identity(work / "data" / "stage1-flux-tiny-512px-8").image_size == 512


def test_report_compares_runs_of_one_image_size_only(tmp_path):
    """Figures without image_size (written before it was recorded) are 256 px; each size gets its own
    section, and a speed-up never divides a 512 px run by a 256 px one."""
    context = {"benchmark": "stage2_train", "device": "D", "flavor": "f", "params": 1, "peak_flops": 1.0, "torch": "t", "commit": "c", "date": "d"}
    runs = [(None, "online", 10.0), (None, "bf16", 30.0), (512, "online", 2.0), (512, "bf16", 8.0)]
    metrics = {"samples_per_s_per_gpu": None, "mfu": 1.0, "peak_memory_reserved": 1.0, "data_wait_share": 0.0}
    lines = [context | {"figure": f"{variant}.{metric}", "value": sps if value is None else value, "variant": variant, "batch": 4,
                        "flops_per_sample": 4 if size else 1} | ({"image_size": size} if size else {})
             for size, variant, sps in runs for metric, value in metrics.items()]  # fmt: skip
    path = tmp_path / "figures.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    derived = tmp_path / "derived.jsonl"
    result = _bench("report", str(path), "--batch", "4", "--out", str(derived))
    assert result.returncode == 0, result.stderr[-4000:]
    sections = result.stdout.split("Stage 2 on D: ")[1:]
    assert [s.split(",")[0] for s in sections] == ["f at 256 px", "f at 512 px"]
    assert "bf16_vs_online_equal_batch                     3.00x" in sections[0]
    assert "bf16_vs_online_equal_batch                     4.00x" in sections[1]
    speedups = {r["image_size"]: r["value"] for r in map(json.loads, derived.read_text().splitlines()) if r["figure"] == "speedup.bf16_vs_online_equal_batch"}
    assert speedups == {256: 3.0, 512: 4.0}


def test_fidelity_compares_smoothed_losses_step_by_step():
    reference = [[step, 2.0] for step in range(1, 41)]
    other = [[step, 2.0 if step < 40 else 2.0 + SMOOTHING_STEPS * 0.1] for step in range(1, 41)]
    f = fidelity(reference, other)
    assert f["max_rel_diff"] == pytest.approx(0.05)  # the last window's mean is 2.1
    assert f["mean_rel_diff"] == pytest.approx(0.05 / (40 - SMOOTHING_STEPS + 1))
    with pytest.raises(ValueError, match="common steps"):
        fidelity(reference[:5], other[:5])
