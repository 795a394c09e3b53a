"""The planner's peak memory against measured single-GPU runs, side by side: one JSON line per run.

    python -m bench.plan_calibration --results bench/results/stage2_calibration_h200.jsonl \\
        [--out bench/results/plan_calibration_h200.jsonl]

Reads the Stage 2 benchmark's records (``python -m bench.stage2``: one run = the figures of one variant
at one batch, image size and date; its ``peak_memory_allocated`` figure, or a ``peak_allocated_gib``
field, where the run recorded one, else ``peak_active_gib``) and our trainer's runs
only. For each run the planner measures its config on fake tensors at world 1 (as the benchmark runs:
FSDP2 with a shard degree of 1) and reports predicted vs measured peak, their ratio, whether it is
within 10 %, and whether both agree that the batch fits the GPU. A run with compiled blocks is planned
with compile on (``plan.step``: Inductor's decompositions and min-cut partitioner decide the saved
activations; temporaries are not fused), one without it eager, both under the trainer's one-GPU
bf16 autocast. FP8 keeps FP8 copies the fake step does not make; those runs name the difference in
``note``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from stage2_train.infra.device import use_cpu_if_no_cuda
from stage2_train.model.flavors import FLAVORS
from stage2_train.plan.probe import PROBE_BATCHES, fake_world, fitted, measure_mode
from stage2_train.plan.sizing import GIB, PeakEnvelope, usable_bytes
from stage2_train.plan.step import COMPILE_NOTE

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "flux_schnell.toml"
AC = {"none": ("none", ""), "full": ("full", ""), "every-other": ("selective", "2")}
"""The benchmark's AC names -> (mode, selective option)."""
GPU_GIB = {"H100": 79.18, "H200": 140.4}
TARGET = 0.10


def runs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our trainer's runs: figures of one variant, batch, image size and date merged into one record."""
    grouped: dict[tuple, dict[str, Any]] = defaultdict(dict)
    for r in records:
        ours = r.get("benchmark") == "stage2_train" and r.get("trainer") == "ours" and r.get("flavor") in FLAVORS
        if ours and r.get("activation_checkpointing") in AC:
            key = (r.get("variant"), r.get("batch"), r.get("image_size", 256), r.get("date"))
            run = grouped[key]
            run.update({k: v for k, v in r.items() if k not in ("figure", "value", "unit")})
            name = r["figure"].split(".", 1)[1]
            run[name] = r["value"]
    return [r for r in grouped.values() if "peak_memory_reserved" in r or "peak_memory_allocated" in r or r.get("status") == "oom"]


def job_args(run: dict[str, Any]) -> list[str]:
    mode, option = AC[run["activation_checkpointing"]]
    return ["--job.config_file", str(CONFIG), "--model.flavor", run["flavor"],
            "--training.img_size", str(run.get("image_size", 256)), "--training.local_batch_size", str(run["batch"]),
            "--parallelism.data_parallel_replicate_degree", "1", "--parallelism.data_parallel_shard_degree", "1",
            "--activation_checkpoint.mode", mode, "--activation_checkpoint.selective_ac_option", option or "op",
            "--compile.enable" if run.get("compile_blocks") else "--compile.no-enable"]  # fmt: skip


def envelope(args: list[str], device: torch.device) -> PeakEnvelope:
    from torchtitan.config import ConfigManager

    job = ConfigManager().parse_args(args)
    fake_world(1)
    try:
        return fitted(measure_mode(job, job.activation_checkpoint.mode, device, PROBE_BATCHES)[1])
    finally:
        torch.distributed.destroy_process_group()


def gpu_gib(device: str) -> float:
    return next((gib for name, gib in GPU_GIB.items() if name in device), 0.0)


def note(run: dict[str, Any]) -> str:
    parts = []
    if run.get("compile_blocks"):
        parts.append(COMPILE_NOTE)
    if run.get("micro_batches", 1) > 1:
        parts.append(f"{run['micro_batches']} micro-batches per step: earlier ones' gradients live through later backwards, the fake step runs one")
    if run.get("float8"):
        parts.append("FP8 linears: FP8 weight and activation copies the fake step does not make")
    return "; ".join(parts)


def compare(run: dict[str, Any], fit: PeakEnvelope) -> dict[str, Any]:
    predicted = fit.at(run["batch"]) / GIB
    kind = next((k for k in ("peak_memory_allocated", "peak_allocated_gib", "peak_active_gib") if run.get(k, -1) > 0), None)
    measured = run[kind] if kind else None
    usable = usable_bytes(gpu_gib(run.get("device", ""))) / GIB
    measured_fits = run.get("status", "ok") != "oom"
    out = {"run": f"{run.get('variant')} batch {run['batch']} at {run.get('image_size', 256)} px",
           "flavor": run["flavor"], "device": run.get("device"), "date": run.get("date"), "batch": run["batch"],
           "image_size": run.get("image_size", 256), "activation_checkpointing": run["activation_checkpointing"],
           "compile_blocks": run.get("compile_blocks"), "float8": run.get("float8"),
           "predicted_peak_gib": round(predicted, 4),
           "measured_peak_allocated_gib": measured, "measured_kind": "active" if kind == "peak_active_gib" else "allocated",
           "measured_peak_reserved_gib": run.get("peak_memory_reserved"),
           "measured_fits": measured_fits, "predicted_fits": predicted <= usable, "usable_gib": round(usable, 2),
           "note": note(run)}  # fmt: skip
    if measured:
        out["ratio"] = round(predicted / measured, 3)
        out["within_10pct"] = abs(predicted / measured - 1) <= TARGET
    out["fit_agrees"] = out["measured_fits"] == out["predicted_fits"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plan_calibration", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, nargs="+", required=True, help="Stage 2 benchmark JSON lines")
    p.add_argument("--out", type=Path, help="also write the comparison lines here")
    args = p.parse_args(argv)
    records = [json.loads(line) for path in args.results for line in path.read_text().splitlines() if line.strip()]
    device = torch.device(use_cpu_if_no_cuda())
    fits: dict[str, PeakEnvelope] = {}
    lines = []
    for run in runs(records):
        key = json.dumps(job_args({**run, "batch": 0}))
        if key not in fits:
            fits[key] = envelope(job_args(run), device)
        lines.append(json.dumps(compare(run, fits[key])))
        print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
