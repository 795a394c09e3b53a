"""The summary of Stage 2 benchmark figures: a table, speed-ups, FP8 fidelity and the targets of
issue #16 (FP8 >= 1.2x bf16 at equal batch, >= 4.3x the online trainer, bf16 no-AC MFU >= 55 %), one
section per image size: runs at different sizes differ in FLOPs per sample and are never compared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.stage2 import figures

TARGETS = {"fp8_vs_bf16": 1.2, "best_vs_online": 4.3, "bf16_mfu_pct": 55.0}
CONTEXT = ("flavor", "image_size", "params", "flops_per_sample", "peak_flops", "torchao", "torchtitan")
MEASURED = ("torch", "commit", "date")
"""Of the runs summed up, kept as ``measured_*``: the report's own torch/commit/date are its process's."""
UNRECORDED_IMAGE_SIZE = 256
"""The size of figures written before the benchmark recorded ``image_size``: it ran at 256 px only."""


def image_size(record: dict[str, Any]) -> int:
    return record.get("image_size", UNRECORDED_IMAGE_SIZE)


def _runs(records: list[dict]) -> dict[tuple[str, int], dict[str, Any]]:
    """(variant, batch) -> its figures; for a repeated run, the later record wins."""
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        if "batch" in r and "variant" in r and r["figure"] != f"{r['variant']}.max_batch":
            runs.setdefault((r["variant"], r["batch"]), {})[r["figure"].split(".", 1)[1]] = r
    return runs


def report(paths: list[Path], batch: int, out: Path | None) -> int:
    records = figures.read_figures(paths)
    if not records:
        raise SystemExit(f"no {figures.BENCHMARK} figures in {[str(p) for p in paths]}")
    for size in sorted({image_size(r) for r in records}):
        print(_report_one_size([r for r in records if image_size(r) == size], batch, out))
    return 0


def _report_one_size(records: list[dict[str, Any]], batch: int, out: Path | None) -> str:
    """The summary of figures that share one image size; derived figures appended to ``out``."""
    first = records[0]
    context = {k: first.get(k) for k in CONTEXT} | {"image_size": image_size(first)} | {f"measured_{k}": first[k] for k in MEASURED}
    fig = figures.Figures(out, first["device"], context) if out else None
    runs = _runs(records)
    sps = {key: run["samples_per_s_per_gpu"]["value"] for key, run in runs.items() if "samples_per_s_per_gpu" in run}
    largest = {r["variant"]: r["value"] for r in records if r["figure"].endswith(".max_batch") and r["value"]}
    lines = [f"Stage 2 on {first['device']}: {first['flavor']} at {image_size(first)} px, {first['params'] / 1e9:.2f} B params, "
             f"{first['flops_per_sample'] / 1e12:.2f} TFLOP/sample, torch {first['torch']}, torchao {first.get('torchao')}",
             f"  {'variant':<16} {'batch':>5} {'samples/s':>10} {'MFU %':>6} {'peak GiB':>9} {'data wait %':>11}  max batch"]  # fmt: skip
    for (variant, b), run in sorted(runs.items()):
        if "samples_per_s_per_gpu" not in run:
            lines.append(f"  {variant:<16} {b:>5} {run['status']['value'].upper()}: {run['status'].get('reason', '')}")
            continue
        lines.append(f"  {variant:<16} {b:>5} {sps[variant, b]:>10.2f} {run['mfu']['value']:>6.1f} {run['peak_memory_reserved']['value']:>9.1f} "
                     f"{run['data_wait_share']['value']:>11.2f}  {largest.get(variant, '-')}")  # fmt: skip

    def ratio(name: str, a: tuple[str, int], b: tuple[str, int]) -> float | None:
        if a not in sps or b not in sps:
            return None
        value = sps[a] / sps[b]
        lines.append(f"  {name:<44} {value:6.2f}x  ({a[0]} @ {a[1]} / {b[0]} @ {b[1]})")
        if fig:
            fig(f"speedup.{name}", round(value, 3), "x", numerator=list(a), denominator=list(b))
        return value

    at_max = {v: (v, n) for v, n in largest.items()}
    fp8_equal = ratio("fp8_vs_bf16_equal_batch", ("fp8", batch), ("bf16", batch))
    ratio("fp8_vs_bf16_each_at_max_batch", at_max.get("fp8", ("-", 0)), at_max.get("bf16", ("-", 0)))
    for variant in ("bf16", "fp8"):
        ratio(f"{variant}_vs_online_equal_batch", (variant, batch), ("online", batch))
        ratio(f"{variant}_at_max_vs_online", at_max.get(variant, ("-", 0)), ("online", batch))
    ours = [key for key in sps if key[0] in ("bf16", "fp8")]
    best_vs_online = max((sps[k] / sps["online", batch] for k in ours), default=None) if ("online", batch) in sps else None
    curves = {v: runs.get((v, batch), {}).get("loss_curve") for v in ("bf16", "fp8")}
    if all(curves.values()):
        f = figures.fidelity(curves["bf16"]["value"], curves["fp8"]["value"])
        lines.append(f"  fp8 vs bf16 smoothed loss ({figures.SMOOTHING_STEPS}-step mean) over {f['steps']} steps: "
                     f"mean rel. diff {100 * f['mean_rel_diff']:.2f} %, max {100 * f['max_rel_diff']:.2f} %")  # fmt: skip
        if fig:
            fig("fidelity.fp8_vs_bf16.mean_rel_diff", round(f["mean_rel_diff"], 5), "fraction", batch=batch,
                smoothing_steps=figures.SMOOTHING_STEPS, **f)  # fmt: skip
    bf16_mfu = runs.get(("bf16", batch), {}).get("mfu", {}).get("value")
    for name, value, target in (("fp8 >= 1.2x bf16 (equal batch)", fp8_equal, TARGETS["fp8_vs_bf16"]),
                                (f"best Stage 2 >= 4.3x online @ {batch}", best_vs_online, TARGETS["best_vs_online"]),
                                (f"bf16 no-AC MFU >= 55 % (batch {batch})", bf16_mfu, TARGETS["bf16_mfu_pct"])):  # fmt: skip
        verdict = "not measured" if value is None else ("PASS" if value >= target else "FAIL")
        lines.append(f"  target {name:<40} {verdict}" + ("" if value is None else f" ({value:.2f})"))
        if fig and value is not None:
            fig(f"target.{name}", verdict.lower(), "", measured=round(value, 3), target=target)
    return "\n".join(lines)
