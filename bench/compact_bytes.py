"""Stored bytes per sample, exact vs compact text, as a function of the caption's T5 length (CPU).

    python -m bench.compact_bytes [--samples 64] [--lengths 1 16 32 64 128 192 256] [--commit SHA]

Real FLUX.1-schnell dims (T5 256 x 4096, CLIP 768, AE moments 2 x 16 x 32 x 32 at 256 px, bfloat16) through
the real ``StoreWriter`` and codecs (blosc-zstd bit-shuffle, CRC32C), one store of ``--samples`` samples
per point. Encodings are random normal bf16, not T5 outputs: real T5 outputs are also high-entropy bf16,
and the exact mode's padding rows are real outputs too, so an exact sample costs the same at any length.
Compact rows from ``t5_length`` on are zero, as Stage 1 writes them.

  exact_bytes_per_sample             stored bytes of an exact sample (any caption length)
  compact_bytes_per_sample           stored bytes of a compact sample of ``t5_length`` L (one line per L)
  compact_fixed_bytes_per_sample     least-squares intercept over L: image, CLIP, metadata, zero rows
  compact_bytes_per_real_token       least-squares slope over L: one real T5 row, compressed
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import emit
from fixtures.synthetic import random_batch, schnell_identity
from shared import contract
from shared.contract import Identity
from shared.store import StoreWriter

BENCH = "compact_bytes"
SAMPLES_PER_SHARD = 64


def stored_bytes_per_sample(work: Path, identity: Identity, samples: int, length: int | None) -> float:
    """Write one store of ``samples`` samples (compact: every caption ``length`` tokens) and divide its
    bytes on disk (arrays, shard indexes, metadata) by the samples."""
    specs = contract.array_specs(identity)
    exact = dataclasses.replace(identity, text_mode=None)  # every T5 row random; the length is set below
    batch = random_batch(exact, contract.array_specs(exact), samples, "k", 0, torch.Generator().manual_seed(0))
    if length is not None:
        batch[contract.T5][:, length:] = 0
        batch[contract.T5_LENGTH] = np.full(samples, length, dtype=np.int32)
    path = work / f"{identity.text_mode or 'exact'}-{length}.zarr"
    writer = StoreWriter(path, identity, specs, path.name, SAMPLES_PER_SHARD)
    writer.append(batch)
    return writer.commit(skipped={}).stored_bytes / samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=SAMPLES_PER_SHARD, help="samples per store (one point)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 16, 32, 64, 128, 192, 256])
    parser.add_argument("--commit", help="commit measured, when the tree has no .git")
    args = parser.parse_args(argv)
    if args.commit:
        os.environ["BENCH_COMMIT"] = args.commit
    exact = schnell_identity()
    compact = dataclasses.replace(exact, text_mode=contract.COMPACT_TEXT)
    common = {"samples": args.samples, "t5": [exact.t5_max_length, exact.t5_dim], "clip": exact.clip_dim,
              "image_size": exact.image_size, "storage_dtype": exact.storage_dtype, "values": "random normal bf16"}
    with tempfile.TemporaryDirectory() as work:
        emit(BENCH, "exact_bytes_per_sample", round(stored_bytes_per_sample(Path(work), exact, args.samples, None)),
             "bytes", **common)
        measured = {n: stored_bytes_per_sample(Path(work), compact, args.samples, n) for n in args.lengths}
    for n, value in measured.items():
        emit(BENCH, "compact_bytes_per_sample", round(value), "bytes", t5_length=n, **common)
    slope, intercept = np.polyfit(list(measured), list(measured.values()), 1)
    emit(BENCH, "compact_fixed_bytes_per_sample", round(intercept), "bytes", lengths=args.lengths, **common)
    emit(BENCH, "compact_bytes_per_real_token", round(slope, 1), "bytes", lengths=args.lengths, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
