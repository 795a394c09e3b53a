"""Stage 1 at 512 px on one GPU: a full encode against ``--text-from`` (the AE alone), side by side in one run.

    python -m bench.stage1_ladder [--samples 5000] [--samples-per-tar 5040] [--ceiling-batches 8]
                                  [--no-compile] [--commit SHA]
                                  [--keep DIR] [--config FILE] [--section.key value …]
    python -m bench.stage1_ladder --device cpu     # smoke: tiny models, a few dozen samples

The encoders and tars are ``bench.stage1``'s (real-size random-weight T5-XXL, CLIP-L and FLUX.1
AE; CC12M-style JPEGs, here with every side doubled: 512–1,536 px, one in eight too small). After a
warm-up of both paths, Stage 1's own pipeline encodes the same tars twice at ``image.size`` 512:

  full_e2e_samples_per_s        T5 + CLIP + AE, the dataset stores text and images
  text_from_e2e_samples_per_s   ``--text-from`` the full dataset: the AE alone, text paired by key
  text_from_speedup             the ratio (issue 19's target: >= 2.5)
  full_bytes_per_sample, image_part_bytes_per_sample   committed bytes per sample of each dataset
  image_part_raw_bytes_per_sample                      its tensors' raw bytes (no compression)
  image_arrays_identical        1 if both datasets' AE moments are equal bit for bit, else 0
  encoders_ceiling_samples_per_s, text_encoders_ceiling_samples_per_s, ae_ceiling_samples_per_s
                                the bare encoders at 512 px (inputs already on the GPU): what each path
                                could reach; their ratio bounds ``text_from_speedup`` when both run at it
  decode_samples_per_s_per_worker   decoding, cropping and tokenizing the first tar's first samples in
                                one process: times ``decode_workers``, the CPU's bound on either path

Each figure is one JSON line with device, torch, commit and date (``bench/common.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np
import zarr

from bench.common import run_in_workdir
from bench.stage1 import REPO, build_encoders, dataset_encoder, encoders_ceiling, write_tars
from fixtures import write_sample_tars, write_tiny_assets
from shared import contract
from stage1_encode import (
    asset_loading,
    prepare,
)
from stage1_encode.config import EncodeConfig, load_config, parse_overrides
from stage1_encode.encode import Encoders
from stage1_encode.identity import image_policy
from stage1_encode.pipeline import Task, run_task
from stage1_encode.skips import Skip
from stage1_encode.tars import read_tar

BENCH = "stage1_ladder"
IMAGE_SIZE = 512
SCALE = 2
"""Image sides of the generated tars times this: the 256 px generator's shapes at 512 px."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--samples", type=int, help="valid samples encoded (default 5000 on cuda, 24 on cpu)")
    parser.add_argument("--samples-per-tar", type=int, default=5040, help="generated samples per tar (CC12M: ~5,040)")
    parser.add_argument("--ceiling-batches", type=int, default=8)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--config", type=Path, help="default: production settings on cuda, configs/encode_tiny.toml on cpu")
    parser.add_argument("--commit", help="commit measured, when the tree has no .git (else git's HEAD)")
    parser.add_argument("--keep", type=Path, help="keep tars and datasets here instead of a deleted temporary directory")
    args, rest = parser.parse_known_args(argv)
    if args.commit:
        os.environ["BENCH_COMMIT"] = args.commit
    on_cpu = args.device == "cpu"
    overrides = [("encoders.device", args.device), ("image.size", str(IMAGE_SIZE)), *parse_overrides(rest)]
    if args.no_compile:
        overrides.append(("encoders.compile", "off"))
    config = load_config(args.config or (REPO / "configs/encode_tiny.toml" if on_cpu else None), overrides)
    samples = args.samples or (24 if on_cpu else 5000)
    models = "tiny" if on_cpu else "real"
    return run_in_workdir(BENCH, args.keep, "bench-ladder-",
                          lambda work: run_benchmark(config, models, samples, args.samples_per_tar, args.ceiling_batches, work))  # fmt: skip


def run_benchmark(
    config: EncodeConfig, models: str, samples: int, samples_per_tar: int, ceiling_batches: int, work: Path
) -> dict:
    assets = write_tiny_assets(work / "assets")  # tokenizers (the models are built in memory)
    tokenizer_hashes = {k: v for k, v in asset_loading.asset_hashes(assets).items() if k.endswith("tokenizer")}
    full_factory = functools.cache(functools.partial(build_encoders, models, tokenizer_hashes))

    def image_factory(device, dtype) -> Encoders:  # what --text-from loads: no T5, no CLIP
        return dataclasses.replace(full_factory(device, dtype), t5=None, clip=None)

    write_sample_tars(work / "warmup-tars", shards=1, per_shard=3 * config.batch.size, seed=10_000, scale=SCALE)
    tars = write_tars(work / "tars", samples, samples_per_tar, scale=SCALE)
    log = io.StringIO()

    def encode(tar_dir: str, name: str, factory, text_from: Path | None = None):
        return run_task(config, Task(tar_dir, work / name, assets, text_from=text_from), factory, out=log)

    encode(str(work / "warmup-tars"), "warmup-full", full_factory)  # every graph of both paths compiles here
    encode(str(work / "warmup-tars"), "warmup-image", image_factory, work / "warmup-full")
    full = encode(str(work / "tars"), "full", full_factory)
    image = encode(str(work / "tars"), "image", image_factory, work / "full")
    sys.stderr.write(log.getvalue())
    identity = contract.read_identity(work / "full")
    ceiling = encoders_ceiling(dataset_encoder(config, full_factory, identity), ceiling_batches,
                               identity.t5_max_length, identity.image_size)  # fmt: skip
    decode_rate = decode_samples_per_s(config, tars[0], assets)

    full_rate, image_rate = (s.samples / s.encode_seconds for s in (full, image))
    full_bytes, image_bytes, image_raw = (
        _per_sample(work / name, key) for name, key in (("full", "stored_bytes"), ("image", "stored_bytes"), ("image", "raw_bytes"))
    )
    context = {
        "models": models, "image_size": config.image.size, "samples": full.samples, "tars": len(tars),
        "samples_per_tar": samples_per_tar, "skipped": full.skipped, "batch": dataclasses.asdict(config.batch),
        "decode_workers": config.workers.resolved_decode(), "storage_dtype": config.storage.dtype,
        "full_encode_seconds": round(full.encode_seconds, 1), "text_from_encode_seconds": round(image.encode_seconds, 1),
    }
    return {
        "context": context,
        "values": [
            ("full_e2e_samples_per_s", round(full_rate, 2), "samples/s"),
            ("text_from_e2e_samples_per_s", round(image_rate, 2), "samples/s"),
            ("text_from_speedup", round(image_rate / full_rate, 3), "ratio"),
            ("full_bytes_per_sample", round(full_bytes), "bytes"),
            ("image_part_bytes_per_sample", round(image_bytes), "bytes"),
            ("image_part_raw_bytes_per_sample", round(image_raw), "bytes"),
            ("image_arrays_identical", int(_same_images(work / "full", work / "image")), "bool"),
            ("encoders_ceiling_samples_per_s", round(ceiling["all"], 2), "samples/s"),
            ("text_encoders_ceiling_samples_per_s", round(ceiling["text"], 2), "samples/s"),
            ("ae_ceiling_samples_per_s", round(ceiling["ae"], 2), "samples/s"),
            ("decode_samples_per_s_per_worker", round(decode_rate, 2), "samples/s"),
        ],
    }


def decode_samples_per_s(config: EncodeConfig, tar: Path, assets: Path, limit: int = 512) -> float:
    """Input samples per second one decode worker prepares (decode, crop, tokenize; skips included)."""
    prepare.init_worker(functools.partial(asset_loading.load_tokenizers, assets, config.text.t5_max_length))
    raw = [r for r in itertools.islice(read_tar(tar), limit) if not isinstance(r, Skip)]
    start = time.perf_counter()
    prepare.prepare_chunk(raw, image_policy(config), config.text.t5_max_length)
    return len(raw) / (time.perf_counter() - start)


def _per_sample(dataset: Path, field: str) -> float:
    stores = [contract.read_store_attrs(p) for p in contract.committed_store_paths(dataset)]
    return sum(getattr(s, field) for s in stores) / sum(s.num_samples for s in stores)


def _same_images(full: Path, image: Path) -> bool:
    """Both datasets hold the same samples with the same AE moments, bit for bit."""
    pairs = zip(contract.committed_store_paths(full), contract.committed_store_paths(image), strict=True)
    for a, b in pairs:
        ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
        for name in (contract.KEY, *contract.IMAGE_TENSORS):
            if not np.array_equal(ga[name][:], gb[name][:]):
                return False
    return True


if __name__ == "__main__":
    sys.exit(main())
