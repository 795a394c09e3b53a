"""Where one profiled training step's GPU time goes, from a trainer's profiler trace
(``--trainer-args '--profiling.enable_profiling --profiling.profile_freq N'``; TorchTitan writes
``<dump>/profile_trace/iteration_N/rank0_trace.json``).

    python -m bench.stage2.trace_summary TRACE.json [--top 12]

Prints the step's wall time, the GPU's busy time (union of kernel intervals) and idle share, kernel time
by kind (name patterns below) and the GPU time of the trainer's annotated ranges (optimizer step, …).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

KINDS = (  # first match wins
    ("optimizer (fused AdamW)", ("fusedoptimizer", "adam")),
    ("foreach (grad-norm clipping)", ("multi_tensor_apply",)),
    ("attention", ("flash", "fmha", "attention", "cudnn")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "matmul")),
    ("fused elementwise, norms, casts (triton)", ("triton",)),
    ("copies", ("copy", "memcpy", "memset")),
)


def kind(name: str) -> str:
    lower = name.lower()
    return next((k for k, patterns in KINDS if any(p in lower for p in patterns)), "other")


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals (kernels on several streams overlap)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def summarize(trace: Path, top: int) -> str:
    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X"]
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    steps = [e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("ProfilerStep#")]
    wall = sum(e["dur"] for e in steps)
    span = max(k["ts"] + k["dur"] for k in kernels) - min(k["ts"] for k in kernels)
    busy = busy_us([(k["ts"], k["ts"] + k["dur"]) for k in kernels])
    by_kind: dict[str, float] = defaultdict(float)
    for k in kernels:
        by_kind[kind(k["name"])] += k["dur"]
    ranges: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "gpu_user_annotation" and not e["name"].startswith("ProfilerStep#"):
            ranges[e["name"]] += e["dur"]
    lines = [f"{trace}: {len(steps)} step(s), wall {wall / 1e3:.1f} ms (CPU), GPU span {span / 1e3:.1f} ms, "
             f"busy {busy / 1e3:.1f} ms, idle {100 * (1 - busy / span):.1f} % of the span, {len(kernels)} kernels"]  # fmt: skip
    lines += [f"  {name:<42} {us / 1e3:9.1f} ms  {100 * us / busy:5.1f} %" for name, us in sorted(by_kind.items(), key=lambda x: -x[1])]
    lines.append("  GPU time of annotated ranges:")
    lines += [f"    {name[:60]:<60} {us / 1e3:9.1f} ms" for name, us in sorted(ranges.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", type=Path)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
    print(summarize(args.trace, args.top))


if __name__ == "__main__":
    main()
