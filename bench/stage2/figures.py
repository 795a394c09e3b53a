"""Figures from the trainers' metrics records (TorchTitan 0.2.2's names, which both trainers log).

Throughput is the samples of one optimizer step (the local batch times its micro-batches) over the
logged step time (``time_metrics/end_to_end(s)``, every step logged), for both trainers alike (the stock trainer's ``tps`` counts tokens); MFU uses Stage 2's FLOPs
per sample (``stage2_train.model.flops`` through the flavor) and TorchTitan's peak for the device.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from bench import common
from bench.stage2.runs import Outcome
from stage2_train.model.flavors import FLAVORS

BENCHMARK = "stage2_train"
STEP_TIME = "time_metrics/end_to_end(s)"
SMOOTHING_STEPS = 20
"""Trailing window of the smoothed loss the FP8 fidelity compares."""


def flops_per_sample(flavor: str, image_size: int) -> tuple[int, int]:
    """(parameters, training FLOPs per sample) of ``flavor`` at ``image_size`` and T5 length 256."""
    from torchtitan.models.flux import FluxModel

    args = dataclasses.replace(FLAVORS[flavor], image_size=image_size)
    with torch.device("meta"):
        model = FluxModel(args)
    return args.get_nparams_and_flops(model, 0)


def summarize(
    outcome: Outcome, batch: int, warmup: int, flops: int, peak_flops: float, micro_batches: int = 1
) -> dict[str, Any]:
    """One run's figures: steps after ``warmup`` (compilation) timed; memory over the whole run. Each step
    trains ``micro_batches`` micro-batches of ``batch``."""
    steps = [r for r in outcome.records if STEP_TIME in r]
    timed = [r[STEP_TIME] for r in steps if r["step"] > warmup]
    summary: dict[str, Any] = {"status": outcome.status, "reason": outcome.reason, "batch": batch, "process_wall_s": round(outcome.wall_s, 1)}
    if steps:
        summary |= {
            "peak_reserved_gib": max(r["memory/max_reserved(GiB)"] for r in steps),
            "peak_active_gib": max(r["memory/max_active(GiB)"] for r in steps),
            "peak_allocated_gib": max((r.get("memory/max_allocated(GiB)", -1.0) for r in steps)),
            "losses": [[r["step"], r["loss_metrics/global_avg_loss"]] for r in steps],
        }
    if timed:
        step_time = sum(timed) / len(timed)
        samples_per_s = batch * micro_batches / step_time
        summary |= {
            "measured_steps": len(timed),
            "step_time_s": step_time,
            "samples_per_s": samples_per_s,
            "mfu_pct": 100 * flops * samples_per_s / peak_flops,
            "data_wait_pct": sum(r["time_metrics/data_loading(%)"] for r in steps if r["step"] > warmup) / len(timed),
        }
    elif outcome.status == "ok":
        summary |= {"status": "error", "reason": f"no step after the {warmup} warm-up steps was logged"}
    return summary


def smoothed(losses: list[list[float]]) -> dict[int, float]:
    """Trailing mean of the loss over ``SMOOTHING_STEPS`` steps, from the first full window."""
    values = [loss for _, loss in losses]
    return {
        int(losses[i][0]): sum(values[i + 1 - SMOOTHING_STEPS : i + 1]) / SMOOTHING_STEPS
        for i in range(SMOOTHING_STEPS - 1, len(values))
    }


def fidelity(reference: list[list[float]], other: list[list[float]]) -> dict[str, float]:
    """Mean and max relative difference of ``other``'s smoothed loss from ``reference``'s, same steps."""
    a, b = smoothed(reference), smoothed(other)
    steps = sorted(set(a) & set(b))
    if not steps:
        raise ValueError(f"fewer than {SMOOTHING_STEPS} common steps to compare")
    diffs = [abs(b[s] - a[s]) / abs(a[s]) for s in steps]
    return {"steps": len(steps) + SMOOTHING_STEPS - 1, "mean_rel_diff": sum(diffs) / len(diffs), "max_rel_diff": max(diffs),
            "final_smoothed_reference": a[steps[-1]], "final_smoothed_other": b[steps[-1]]}  # fmt: skip


class Figures:
    """JSON lines to stdout and appended to ``out``: each with the run's context (device, torch,
    torchao, commit, date, model) so a results file stands on its own."""

    def __init__(self, out: Path | None, device: str, context: dict[str, Any], benchmark: str = BENCHMARK) -> None:
        self.out, self.device, self.context, self.benchmark = out, device, context, benchmark

    def __call__(self, figure: str, value: Any, unit: str, **extra: Any) -> None:
        record = common.emit(self.benchmark, figure, value, unit, device=self.device, **self.context, **extra)
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            with open(self.out, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_figures(paths: list[Path]) -> list[dict[str, Any]]:
    return [r for path in paths for r in map(json.loads, path.read_text().splitlines()) if r.get("benchmark") == BENCHMARK]
