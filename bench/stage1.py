"""Stage 1 on one GPU: end-to-end throughput (tars -> committed stores) against the bare encoders' ceiling.

    python -m bench.stage1 [--samples 5000] [--samples-per-tar 500] [--no-compile] [--commit SHA]
                                  [--keep DIR] [--config FILE] [--section.key value …]
    python -m bench.stage1 --device cpu     # smoke: tiny models, a few dozen samples

Builds real-size T5-XXL, CLIP-L text and FLUX.1 AE with random weights in memory (no network, no weight
files; tokenizers are the tiny test ones, whose ids fit the real vocabularies), generates CC12M-style
tars with the sample-data generator (real JPEGs, 256–768 px, one in eight too small), warms up (compiles),
then in one run measures:

  e2e_samples_per_s         Stage 1's own pipeline, decode workers to fsynced stores (steady: first tar
                            to last commit; the whole task's time is in the line too)
  encoders_ceiling          the same encoders on the same batch shapes, inputs already on the GPU
  e2e_over_ceiling          the ratio of the two
  text_encoders_ceiling_…, ae_ceiling_…   T5-XXL + CLIP-L alone, and the AE alone, likewise
  bytes_per_sample_on_disk  committed stores' bytes per sample
  cc12m_hours_16_gpus       10,968,539 samples at the end-to-end rate on 16 GPUs
  first_batch_bit_identical 1 if the first tar's first batch, as stored, equals the same samples
                            encoded directly (no staging, copying or writing in between), else 0

Each figure is one JSON line with device, torch, commit and date (``bench/common.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import zarr

from bench.common import run_in_workdir
from fixtures import write_sample_tars, write_tiny_assets
from fixtures.tiny import AE_DIMS, CLIP_DIMS, T5_DIMS
from shared import (
    contract,
    torch_storage,
)
from stage1_encode import (
    asset_loading,
    prepare,
)
from stage1_encode.config import EncodeConfig, load_config, parse_overrides
from stage1_encode.encode import BatchEncoder, Encoders
from stage1_encode.identity import image_policy
from stage1_encode.pipeline import Task, run_task
from stage1_encode.skips import Skip
from stage1_encode.t5_fused import FusedT5Encoder
from stage1_encode.tars import read_tar

BENCH = "stage1_encode"
REPO = Path(__file__).resolve().parents[1]
CC12M_SAMPLES = 10_968_539
SAMPLES_PER_TAR = 500
"""Default tar size: a tenth of CC12M's ~5,040, so a short run still crosses many tar boundaries (each
ends in a short batch and a commit); ``--samples-per-tar 5040`` measures CC12M's own shape."""
VALID_FRACTION = 7 / 8
"""The sample-data generator makes one sample in eight too small (skipped, as in production)."""

MODELS = {
    "real": {
        "t5": dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=32128),
        "clip": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     projection_dim=768, vocab_size=49408),
        "ae": {},  # TorchTitan's AutoEncoderParams defaults are FLUX.1's
    },
    "tiny": {"t5": dict(T5_DIMS, vocab_size=32128), "clip": dict(CLIP_DIMS, vocab_size=49408), "ae": AE_DIMS},
}


def build_encoders(models: str, tokenizer_hashes: dict, device: torch.device, dtype: torch.dtype) -> Encoders:
    """Random-weight encoders of FLUX.1-schnell's architecture, called exactly as ``stage1_encode.asset_loading`` loads them."""
    from torchtitan.models.flux.model.autoencoder import AutoEncoder, AutoEncoderParams
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    spec = MODELS[models]
    torch.manual_seed(0)
    with torch.device(device):
        t5 = T5EncoderModel(T5Config(**spec["t5"], feed_forward_proj="gated-gelu", tie_word_embeddings=False))
        clip = CLIPTextModel(CLIPTextConfig(**spec["clip"], max_position_embeddings=77, hidden_act="quick_gelu"))
        params = AutoEncoderParams(**spec["ae"])
        ae_encoder = AutoEncoder(params).encoder
    return Encoders(
        t5=FusedT5Encoder(t5.eval().requires_grad_(False).to(dtype)),
        clip=asset_loading.TextEncoder(clip.eval().requires_grad_(False), "pooler_output").to(dtype),
        ae_encoder=ae_encoder.eval().requires_grad_(False).to(dtype),
        ae_params=dataclasses.asdict(params),
        hashes={"t5": {"random": f"{models} seed 0"}, "clip": {"random": f"{models} seed 0"},
                "ae": {"random": f"{models} seed 0"}, **tokenizer_hashes},
        device=device,
        dtype=dtype,
    )


def write_tars(out: Path, valid_samples: int, per_tar: int, seed: int = 0, scale: int = 1) -> list[Path]:
    """Enough CC12M-style tars of ``per_tar`` samples for ``valid_samples`` kept ones, generated in parallel
    (``scale``: image sides times this, for encodes above 256 px)."""
    total = math.ceil(valid_samples / VALID_FRACTION)
    sizes = [min(per_tar, total - start) for start in range(0, total, per_tar)]
    out.mkdir(parents=True)
    with ProcessPoolExecutor(max(1, min(len(sizes), (os.cpu_count() or 2) - 1))) as pool:
        parts = list(pool.map(_write_one_tar, [out / f"part-{i}" for i in range(len(sizes))], sizes,
                              [seed + i for i in range(len(sizes))], [scale] * len(sizes)))
    paths = []
    for i, part in enumerate(parts):  # each part is a one-tar directory named cc12m-train-0000.tar
        paths.append(part.rename(out / f"cc12m-train-{i:04d}.tar"))
        part.parent.rmdir()
    return paths


def _write_one_tar(directory: Path, samples: int, seed: int, scale: int = 1) -> Path:
    return write_sample_tars(directory, shards=1, per_shard=samples, seed=seed, scale=scale)[0]


def dataset_encoder(config: EncodeConfig, factory, identity: contract.Identity) -> BatchEncoder:
    """The encoders as a dataset's task ran them (its recorded dtype and compilation)."""
    compute = identity.preprocessing["encoder_compute"]
    device = torch.device(config.encoders.device)
    return BatchEncoder(factory(device, getattr(torch, compute["dtype"])), config.batch, bool(compute["compile"]),
                        config.encoders.ae_channels_last and device.type == "cuda")


def encoders_ceiling(encoder: BatchEncoder, batches: int, t5_length: int, image_size: int) -> dict[str, float]:
    """Samples/s of the bare encoders on full batches already on the device (same shapes as Stage 1's):
    all of them (``all``), and the text encoders and the AE alone (to compare with single-model probes)."""
    size, device = encoder.batch.size, encoder.encoders.device
    gen = torch.Generator(device=device).manual_seed(0)
    inputs = [
        (torch.randint(0, 800, (size, t5_length), device=device, generator=gen),
         torch.randint(0, 1000, (size, contract.CLIP_TOKENS), device=device, generator=gen),
         torch.randint(0, 256, (size, 3, image_size, image_size), device=device, generator=gen, dtype=torch.uint8))
        for _ in range(batches)
    ]
    runs = {
        "all": lambda b: (encoder.encode_text(b[0], b[1]), encoder.encode_images(b[2])),
        "text": lambda b: encoder.encode_text(b[0], b[1]),
        "ae": lambda b: encoder.encode_images(b[2]),
    }
    rates = {}
    for name, run in runs.items():
        run(inputs[0])  # warm-up (compiled graphs are cached from the end-to-end run)
        _sync(device)
        start = time.perf_counter()
        for batch in inputs:
            run(batch)
        _sync(device)
        rates[name] = batches * size / (time.perf_counter() - start)
    return rates


def first_batch_bit_identical(encoder: BatchEncoder, config: EncodeConfig, tar: Path, dataset: Path, assets: Path) -> bool:
    """The first batch of ``tar`` as the pipeline stored it equals its samples encoded directly."""
    prepare.init_worker(functools.partial(asset_loading.load_tokenizers, assets, config.text.t5_max_length))
    raw = [r for r in read_tar(tar) if not isinstance(r, Skip)]
    prepared = prepare.prepare_chunk(raw, image_policy(config), config.text.t5_max_length)
    batch = [p for p in prepared if not isinstance(p, Skip)][: config.batch.size]
    tensors = encoder.encode_text(np.stack([p.t5_tokens for p in batch]), np.stack([p.clip_tokens for p in batch]))
    tensors |= encoder.encode_images(np.stack([p.image.pixels for p in batch]))
    store = zarr.open_group(contract.shards_dir(dataset) / contract.store_name(tar), mode="r")
    storage_dtype = contract.read_identity(dataset).storage_dtype
    same_keys = list(store["key"][: len(batch)]) == [p.key for p in batch]
    return same_keys and all(
        np.array_equal(torch_storage.to_storage(t, storage_dtype), store[name][: len(batch)]) for name, t in tensors.items()
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--models", choices=sorted(MODELS), help="default: real on cuda, tiny on cpu")
    parser.add_argument("--samples", type=int, help="valid samples encoded (default 5000 on cuda, 48 on cpu)")
    parser.add_argument("--samples-per-tar", type=int, default=SAMPLES_PER_TAR, help="generated samples per tar")
    parser.add_argument("--ceiling-batches", type=int, default=8)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--config", type=Path, help="default: production settings on cuda, configs/encode_tiny.toml on cpu")
    parser.add_argument("--commit", help="commit measured, when the tree has no .git (else git's HEAD)")
    parser.add_argument("--keep", type=Path, help="keep tars and dataset here instead of a deleted temporary directory")
    args, rest = parser.parse_known_args(argv)
    if args.commit:
        os.environ["BENCH_COMMIT"] = args.commit
    on_cpu = args.device == "cpu"
    models = args.models or ("tiny" if on_cpu else "real")
    samples = args.samples or (48 if on_cpu else 5000)
    overrides = [("encoders.device", args.device), *(parse_overrides(rest))]
    if args.no_compile:
        overrides.append(("encoders.compile", "off"))
    config = load_config(args.config or (REPO / "configs/encode_tiny.toml" if on_cpu else None), overrides)

    return run_in_workdir(BENCH, args.keep, "bench-stage1-",
                          lambda work: run_benchmark(config, models, samples, args.samples_per_tar, args.ceiling_batches, work))  # fmt: skip


def run_benchmark(
    config: EncodeConfig, models: str, samples: int, samples_per_tar: int, ceiling_batches: int, work: Path
) -> dict:
    assets = write_tiny_assets(work / "assets")  # tokenizers (the models here are built in memory)
    hashes = asset_loading.asset_hashes(assets)
    tokenizer_hashes = {k: v for k, v in hashes.items() if k.endswith("tokenizer")}
    encoders_factory = functools.cache(functools.partial(build_encoders, models, tokenizer_hashes))

    warm_tars = work / "warmup-tars"
    # Two full batches and a short one: every graph (full, padded and eager micro-batches) is built here.
    write_sample_tars(warm_tars, shards=1, per_shard=3 * config.batch.size, seed=10_000)
    tars = write_tars(work / "tars", samples, samples_per_tar)
    log = io.StringIO()
    run_task(config, Task(str(warm_tars), work / "warmup", assets), encoders_factory, out=log)  # compiles
    summary = run_task(config, Task(str(work / "tars"), work / "dataset", assets), encoders_factory, out=log)
    sys.stderr.write(log.getvalue())  # the tasks' progress lines, for reading a figure that looks off

    identity = contract.read_identity(work / "dataset")
    encoder = dataset_encoder(config, encoders_factory, identity)
    ceiling = encoders_ceiling(encoder, ceiling_batches, identity.t5_max_length, identity.image_size)
    identical = first_batch_bit_identical(encoder, config, tars[0], work / "dataset", assets)

    stores = [contract.read_store_attrs(p) for p in contract.committed_store_paths(work / "dataset")]
    e2e = summary.samples / summary.encode_seconds
    context = {
        "models": models, "dtype": identity.preprocessing["encoder_compute"]["dtype"],
        "compile": bool(identity.preprocessing["encoder_compute"]["compile"]),
        "samples": summary.samples, "tars": len(tars), "samples_per_tar": samples_per_tar, "skipped": summary.skipped,
        "batch": dataclasses.asdict(config.batch), "decode_workers": config.workers.resolved_decode(),
        "storage_dtype": config.storage.dtype, "task_seconds": round(summary.seconds, 1),
        "encode_seconds": round(summary.encode_seconds, 1), "drain_seconds": round(summary.drain_seconds, 1),
        "stores_in_flight": config.workers.stores_in_flight,
    }
    return {
        "context": context,
        "values": [
            ("e2e_samples_per_s", round(e2e, 2), "samples/s"),
            ("encoders_ceiling_samples_per_s", round(ceiling["all"], 2), "samples/s"),
            ("e2e_over_ceiling", round(e2e / ceiling["all"], 3), "ratio"),
            ("text_encoders_ceiling_samples_per_s", round(ceiling["text"], 2), "samples/s"),
            ("ae_ceiling_samples_per_s", round(ceiling["ae"], 2), "samples/s"),
            ("bytes_per_sample_on_disk", round(sum(s.stored_bytes for s in stores) / summary.samples), "bytes"),
            ("raw_bytes_per_sample", round(sum(s.raw_bytes for s in stores) / summary.samples), "bytes"),
            ("cc12m_hours_16_gpus", round(CC12M_SAMPLES / (e2e * 16) / 3600, 2), "hours"),
            ("first_batch_bit_identical", int(identical), "bool"),
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
