"""The Stage 2 benchmark's commands (``python -m bench.stage2 --help``; the package docstring says more)."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.stage2 import figures, runs
from bench.stage2.inputs import online_inputs, stage1_dataset
from bench.stage2.report import report
from bench.stage2.variants import Variant, parse_variants

SEARCH_SIZES = "40,48,56,64,72,80,96,112,128,160,192,256"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def gpu_name(requested: str) -> str | None:
    """The GPU's name from nvidia-smi: this process must hold no CUDA context while trainers measure memory."""
    if requested == "cpu":
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        if requested == "cuda":
            raise SystemExit(f"--device cuda: nvidia-smi found no GPU ({exc})") from exc
        return None


class Bench:
    """What the commands share: device, model, inputs and where figures go."""

    def __init__(self, args: argparse.Namespace) -> None:
        from torchtitan.tools.utils import get_peak_flops

        self.args = args
        gpu = gpu_name(args.device)
        self.cpu = gpu is None
        self.device = gpu or f"CPU ({platform.processor() or platform.machine()})"
        self.flavor = args.flavor or ("flux-tiny" if self.cpu else "flux-schnell-8x16")
        self.peak_flops = get_peak_flops(self.device)
        nparams, self.flops = figures.flops_per_sample(self.flavor, args.image_size)
        self.workdir = args.workdir.resolve()
        context = {"flavor": self.flavor, "image_size": args.image_size, "params": nparams, "flops_per_sample": self.flops,
                   "peak_flops": self.peak_flops, "torchao": _version("torchao"), "torchtitan": _version("torchtitan")}  # fmt: skip
        self.fig = figures.Figures(args.out, self.device, context)
        log(f"{self.device}: {self.flavor} at {args.image_size} px, {nparams / 1e9:.2f} B params, "
            f"{self.flops / 1e12:.2f} TFLOP/sample, peak {self.peak_flops:.3g} FLOP/s")  # fmt: skip

    def run(self, variant: Variant, batch: int, steps: int) -> dict[str, Any]:
        """One run of ``variant``; its figures emitted; its summary returned."""
        size = self.args.image_size
        mean_t5_tokens = self.args.mean_t5_tokens if variant.text == "compact" else None
        data = (online_inputs(self.workdir / "data", self.args.samples, self.cpu, size) if variant.online
                else stage1_dataset(self.workdir / "data", self.flavor, self.args.samples, size, mean_t5_tokens))  # fmt: skip
        job = runs.Job(variant, self.flavor, batch, steps, size, self.args.seed, self.args.compile_backend, tuple(self.args.trainer_args.split()))
        log(f"{variant.name} batch {batch}, {steps} steps ...")
        outcome = runs.run(job, data, self.workdir, self.args.run_timeout_s, self.cpu)
        s = figures.summarize(outcome, batch, self.args.warmup, self.flops, self.peak_flops, variant.micro_batches)
        log(f"{variant.name} batch {batch}: {s['status']} {s['reason']} after {s['process_wall_s']} s"
            + (f": {s['samples_per_s']:.2f} samples/s, MFU {s['mfu_pct']:.1f} %, peak {s['peak_reserved_gib']:.1f} GiB" if "samples_per_s" in s else "")
            + f" (log {outcome.log})")  # fmt: skip
        extra = {"variant": variant.name, "description": variant.description, "batch": batch, "steps": steps, "warmup_steps": self.args.warmup,
                 "trainer": variant.trainer, "activation_checkpointing": variant.ac, "compile_blocks": variant.compile_blocks,
                 "float8": variant.float8, "micro_batches": variant.micro_batches, "process_wall_s": s["process_wall_s"],
                 "text": variant.text, "mean_t5_tokens": mean_t5_tokens}  # fmt: skip
        if "samples_per_s" not in s:
            self.fig(f"{variant.name}.status", s["status"], "", reason=s["reason"], **extra)
            return s
        self.fig(f"{variant.name}.samples_per_s_per_gpu", round(s["samples_per_s"], 3), "samples/s",
                 step_time_s=round(s["step_time_s"], 4), measured_steps=s["measured_steps"], **extra)  # fmt: skip
        self.fig(f"{variant.name}.mfu", round(s["mfu_pct"], 2), "%", **extra)
        self.fig(f"{variant.name}.peak_memory_reserved", s["peak_reserved_gib"], "GiB", peak_active_gib=s["peak_active_gib"], **extra)
        self.fig(f"{variant.name}.peak_memory_allocated", s["peak_allocated_gib"], "GiB", **extra)
        self.fig(f"{variant.name}.data_wait_share", round(s["data_wait_pct"], 3), "%", **extra)
        self.fig(f"{variant.name}.loss_curve", s["losses"], "[step, loss]", **extra)
        return s

    def max_batch(self, variant: Variant) -> None:
        """Walk ``--sizes`` from ``--start``: up while a size fits, down while it does not; each fit timed."""
        sizes = sorted(self.args.sizes)
        i = sizes.index(self.args.start) if self.args.start in sizes else 0
        fits, ooms = [], []
        while 0 <= i < len(sizes):
            status = self.run(variant, sizes[i], self.args.steps)["status"]
            if status == "ok":
                fits.append(sizes[i])
            elif status == "oom":
                ooms.append(sizes[i])
            else:
                break
            if fits and ooms:
                break
            i += 1 if status == "ok" else -1
        largest = max(fits) if fits else None
        bound = (f"fits {largest}, out of memory at {min(o for o in ooms if o > largest)}" if largest and any(o > largest for o in ooms)
                 else f"fits >= {largest} (largest size tried)" if largest else "no size tried fits")  # fmt: skip
        self.fig(f"{variant.name}.max_batch", largest, "samples", bound=bound, variant=variant.name, tried={"fits": fits, "oom": ooms})


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.stage2", description=sys.modules["bench.stage2"].__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("timed", "max-batch"):
        c = sub.add_parser(name)
        c.add_argument("--variants", type=parse_variants, default=parse_variants("online,bf16,fp8"))
        c.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
        c.add_argument("--image-size", type=int, default=256, help="px; the Stage 1 dataset, the online tars and both trainers' img_size")
        c.add_argument("--flavor", help="a stage2_train flavor (default flux-schnell-8x16; CPU: flux-tiny)")
        c.add_argument("--steps", type=int, default=12, help="steps per run, every one logged")
        c.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing (compilation)")
        c.add_argument("--samples", type=int, default=256, help="samples in the inputs (at least the largest batch)")
        c.add_argument("--seed", type=int, default=0)
        c.add_argument("--mean-t5-tokens", type=float, default=32.0,
                       help="compact-text variants (bf16_compact): the synthetic captions' mean T5 length, EOS included "
                            "(exponential, capped at 256); measure your data's with inspect before trusting a speed-up")  # fmt: skip
        c.add_argument("--compile-backend", default="inductor")
        c.add_argument("--run-timeout-s", type=float, default=600.0)
        c.add_argument("--workdir", type=Path, default=Path("/tmp/stage2_bench"))
        c.add_argument("--out", type=Path, help="append the figures (JSON lines) here too")
        c.add_argument("--trainer-args", default="", help="more overrides for the trainers, e.g. '--profiling.enable_profiling'")
    sub.choices["timed"].add_argument("--batch", type=int, default=32)
    sub.choices["max-batch"].add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")], default=SEARCH_SIZES)
    sub.choices["max-batch"].add_argument("--start", type=int, default=48, help="the size tried first")
    r = sub.add_parser("report")
    r.add_argument("paths", type=Path, nargs="+")
    r.add_argument("--batch", type=int, default=32, help="the equal batch the variants are compared at")
    r.add_argument("--out", type=Path, help="append the derived figures (speed-ups, fidelity, targets) here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "report":
        return report(args.paths, args.batch, args.out)
    bench = Bench(args)
    for variant in args.variants:
        if args.command == "timed":
            bench.run(variant, args.batch, args.steps)
        else:
            bench.max_batch(variant)
    return 0
