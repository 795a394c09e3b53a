"""Stage 1's store writing alone, on the host's CPUs: how many samples/s one writer process commits, and
how many several commit side by side (what ``workers.stores_in_flight`` buys).

    python -m bench.stage1_writer [--processes 1 3 6] [--samples 512] [--commit SHA]

Each process writes its own store of FLUX.1-schnell shapes (T5 [256, 4096], CLIP [768], AE moments
2 x [16, 32, 32], bf16) through ``shared.store.StoreWriter`` in batches of 256, exactly as a Stage 1
writer process does (checksums, finite check, blosc-zstd, commit with fsync), from values drawn like
random-weight encoders' outputs (normal), which compress as those did on the GPU benchmark.

  writer_samples_per_s   samples committed per second by N processes together (one line per N)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import emit
from fixtures.synthetic import random_batch, schnell_identity
from shared import contract
from shared.store import StoreWriter

BENCH = "stage1_writer"
BATCH = 256


def write_one_store(out: str, samples: int, seed: int, start_at: float) -> tuple[float, float]:
    """Prepare the values, wait for the common start, write and commit; (start, end) wall times."""
    identity = schnell_identity()
    specs = contract.array_specs(identity)
    gen = torch.Generator().manual_seed(seed)
    batches = [random_batch(identity, specs, min(BATCH, samples - s), f"w{seed}-", s, gen) for s in range(0, samples, BATCH)]
    time.sleep(max(0.0, start_at - time.time()))
    started = time.time()
    writer = StoreWriter(Path(out) / f"w{seed}.zarr", identity, specs, f"w{seed}.tar", samples_per_shard=64)
    for batch in batches:
        writer.append(batch)
    writer.commit(skipped={})
    return started, time.time()


def measure(processes: int, samples: int, work: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=work))
    start_at = time.time() + 10.0 + 2.0 * processes  # every process has its values ready by then
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        spans = pool.starmap(write_one_store, [(str(out), samples, seed, start_at) for seed in range(processes)])
    return processes * samples / (max(e for _, e in spans) - min(s for s, _ in spans))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 3, 6])
    parser.add_argument("--samples", type=int, default=512, help="samples per process")
    parser.add_argument("--commit", help="commit measured, when the tree has no .git")
    parser.add_argument("--work", type=Path, help="where stores are written (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.commit:
        os.environ["BENCH_COMMIT"] = args.commit
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        for n in args.processes:
            rate = measure(n, args.samples, Path(work))
            emit(BENCH, "writer_samples_per_s", round(rate, 1), "samples/s", processes=n,
                 samples_per_process=args.samples, cpus=len(os.sched_getaffinity(0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
