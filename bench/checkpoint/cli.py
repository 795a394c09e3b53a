"""The checkpoint benchmark's command (``python -m bench.checkpoint --help``; the package docstring says more)."""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.checkpoint.figures import last_save_seconds, round_all, save_stalls
from bench.checkpoint.watch import Watcher, checkpoint_bytes
from bench.stage2 import runs
from bench.stage2.cli import gpu_name
from bench.stage2.figures import Figures, flops_per_sample
from bench.stage2.inputs import stage1_dataset
from bench.stage2.variants import VARIANTS
from stage2_train.monitor.rank_log import read_rank_logs

BENCHMARK = "stage2_checkpoint"
MODES = ("disabled", "async", "async_with_pinned_mem")
VARIANT = VARIANTS["bf16"]
"""The trainer as the Stage 2 benchmark runs it: blocks compiled, no activation checkpointing, bf16."""


def log(message: str) -> None:
    print(f"[bench.checkpoint] {message}", file=sys.stderr, flush=True)


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"unknown async modes {unknown}; choose from {', '.join(MODES)}")
    return modes


def trainer_overrides(args: argparse.Namespace, mode: str, stop_file: Path) -> tuple[str, ...]:
    """Checkpoints every ``interval`` steps in ``mode``, all kept (the watcher deletes them), the stop file
    ``slurm/train.sbatch`` would pass; after the benchmark's own ``--checkpoint.no-enable``, so they win."""
    return ("--checkpoint.enable", "--checkpoint.folder", "checkpoint", "--checkpoint.interval", str(args.interval),
            "--checkpoint.async_mode", mode, "--checkpoint.keep_latest_k", "0", "--stage2.stop_file", str(stop_file),
            *args.trainer_args.split())  # fmt: skip


def run_mode(args: argparse.Namespace, mode: str, data: Path, cpu: bool, fig: Figures) -> None:
    """One trainer run in ``mode``: ``saves`` interval saves, then a stop request mid-interval; its figures."""
    workdir = args.workdir / mode
    workdir.mkdir(parents=True, exist_ok=True)
    stop_file = workdir / "stop"
    for stale in (stop_file, stop_file.with_name("stop.stopped")):
        stale.unlink(missing_ok=True)
    last_interval = args.interval * args.saves
    stop_after = last_interval + max(1, args.interval // 2)
    steps = last_interval + 2 * args.interval  # never reached when the stop works
    job = runs.Job(VARIANT, args.flavor, args.batch, steps, args.image_size, args.seed, args.compile_backend,
                   trainer_overrides(args, mode, stop_file))  # fmt: skip
    dump = workdir / "runs" / f"{VARIANT.name}-{args.image_size}px-b{args.batch}"  # as runs.run names it
    watcher = Watcher(dump, stop_file, last_interval, stop_after)
    watcher.start()
    log(f"{mode}: {args.saves} interval saves every {args.interval} steps, then a stop request ...")
    outcome = runs.run(job, data, workdir, args.run_timeout_s, cpu)
    timing = watcher.finish()
    common: dict[str, Any] = {"async_mode": mode, "batch": args.batch, "interval": args.interval, "status": outcome.status}
    ranks = read_rank_logs(dump).get(0, [])
    common["peak_host_rss_gib"] = max((r["peak_host_rss_gib"] for r in ranks), default=None)
    common["peak_allocated_gib"] = max((r["peak_allocated_gib"] or 0 for r in ranks), default=None) if not cpu else None
    if outcome.status != "ok" or timing.step is None:
        reason = outcome.reason or f"no stop acknowledged (log {outcome.log})"
        log(f"{mode}: {outcome.status}: {reason}")
        fig(f"{mode}.status", "error" if outcome.status == "ok" else outcome.status, "", reason=reason, **common)
        return
    stalls = save_stalls(outcome.records, args.interval, args.warmup)
    interval_bytes = list(timing.interval_bytes.values())
    if stalls.get("stalls_s"):
        steady = stalls["stalls_s"][1:] or stalls["stalls_s"]  # the first save also sets up staging buffers
        fig(f"{mode}.interval_save_stall", round(statistics.median(steady), 3), "s", first_stall_s=round(stalls["stalls_s"][0], 3),
            stalls_s=round_all(stalls["stalls_s"]), interval_excess_s=round_all(stalls["interval_excess_s"]),
            save_steps=stalls["save_steps"], median_step_s=round(stalls["median_step_s"], 4),
            checkpoint_bytes=max(interval_bytes, default=None), **common)  # fmt: skip
    stop_dir = dump / "checkpoint" / f"step-{timing.step}"
    size = checkpoint_bytes(stop_dir)
    save_s = last_save_seconds(outcome.log.read_text(errors="replace"))
    fig(f"{mode}.stop_to_complete", round(timing.seconds, 3), "s", stop_step=timing.step,
        requested_after_step=timing.requested_after_step, complete=(stop_dir / ".metadata").exists(), checkpoint_bytes=size,
        stop_save_s=save_s, write_gb_per_s=round(size / save_s / 1e9, 3) if save_s else None,
        median_step_s=round(stalls["median_step_s"], 4) if stalls else None, **common)  # fmt: skip
    if not args.keep_checkpoints:
        shutil.rmtree(dump / "checkpoint", ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.checkpoint", description=sys.modules["bench.checkpoint"].__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--modes", type=parse_modes, default=list(MODES), help="[checkpoint] async_mode values, one run each")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--flavor", help="a stage2_train flavor (default flux-schnell-4x8; CPU: flux-tiny)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--interval", type=int, default=10, help="steps between interval saves; more than --warmup")
    p.add_argument("--saves", type=int, default=3, help="interval saves before the stop request")
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the median step time (compilation)")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--run-timeout-s", type=float, default=540.0, help="per run; under the device tool's 600 s per command")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/checkpoint_bench"), help="dataset, runs and checkpoints (one on disk at a time)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's stop checkpoint")
    p.add_argument("--out", type=Path, help="append the figures (JSON lines) here too")
    p.add_argument("--trainer-args", default="", help="more overrides for the trainer")
    args = p.parse_args(argv)
    if args.interval <= args.warmup:
        p.error(f"--interval {args.interval} must exceed --warmup {args.warmup}: a save's stall is read off the step after it")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gpu = gpu_name(args.device)
    cpu = gpu is None
    args.flavor = args.flavor or ("flux-tiny" if cpu else "flux-schnell-4x8")
    args.workdir = args.workdir.resolve()
    device = gpu or f"CPU ({platform.processor() or platform.machine()})"
    params, _ = flops_per_sample(args.flavor, args.image_size)
    fig = Figures(args.out, device, {"flavor": args.flavor, "params": params, "image_size": args.image_size}, BENCHMARK)
    data = stage1_dataset(args.workdir / "data", args.flavor, args.samples, args.image_size)
    for mode in args.modes:
        run_mode(args, mode, data, cpu, fig)
    return 0
