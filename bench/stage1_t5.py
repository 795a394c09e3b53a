"""T5-XXL's encoder alone on one GPU: samples/s and TFLOP/s of HF's module against ``FusedT5Encoder``.

    python -m bench.stage1_t5 [--batches 64,128,256] [--length 256] [--iters 10] [--profile] [--commit SHA]
    python -m bench.stage1_t5 --device cpu --models tiny --batches 2 --length 32 --iters 1   # smoke

Real-size T5-XXL (random weights, bf16, compiled as Stage 1 compiles it), token ids of Stage 1's shape
[batch, 256]. For each implementation and batch size one JSON line (``bench/common.py``):

  <impl>.samples_per_s, <impl>.tflops     HF's ``T5EncoderModel`` as Stage 1 loads it (``hf``), with eager
                                          attention (``hf_eager_attention``), and ``stage1_encode.t5_fused``
  <impl>.max_abs_error, <impl>.rms_error  against the same model in float32 (batch 8), and the float32
                                          output's RMS for scale
With ``--profile``: each implementation's GPU time at the middle batch size by kernel kind, and its top
kernels (stderr), to show where the time goes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict

import torch

from bench.common import emit
from bench.stage1 import MODELS
from stage1_encode.asset_loading import TextEncoder
from stage1_encode.t5_fused import FusedT5Encoder

BENCH = "stage1_t5"
KINDS = (("attention", ("fmha", "flash", "attention", "cudnn")), ("matmul", ("gemm", "nvjet", "cutlass", "sm90", "xmma")),
         ("triton (fused elementwise, norms)", ("triton",)))  # fmt: skip


def flops_per_sample(config, length: int) -> float:
    """Matmul FLOPs of one [length] sequence: linears (2 per weight per token) and attention (QK^T and AV)."""
    d, ff, inner = config.d_model, config.d_ff, config.num_heads * config.d_kv
    per_token = 2 * config.num_layers * (4 * d * inner + 3 * d * ff)
    return length * per_token + 4 * config.num_layers * length * length * inner


def build(models: str, device: torch.device):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    with torch.device(device):
        hf = T5EncoderModel(T5Config(**MODELS[models]["t5"], feed_forward_proj="gated-gelu", tie_word_embeddings=False))
    return hf.eval().requires_grad_(False)


def timed(module, tokens: torch.Tensor, iters: int) -> float:
    for _ in range(2):
        module(tokens)
    _sync(tokens.device)
    start = time.perf_counter()
    for _ in range(iters):
        module(tokens)
    _sync(tokens.device)
    return (time.perf_counter() - start) / iters


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile(name: str, module, tokens: torch.Tensor) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = tokens.device.type == "cuda"
    module(tokens)
    _sync(tokens.device)
    with torch_profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            module(tokens)
        _sync(tokens.device)
    own_time = (lambda e: e.device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    kernels = [(e.key, own_time(e) / 3) for e in prof.key_averages() if own_time(e) > 0]
    kernels = [(k, t) for k, t in kernels if not k.startswith(("## ", "aten::", "Torch-Compiled", "CompiledFunction"))]
    total = sum(t for _, t in kernels)
    by_kind: dict[str, float] = defaultdict(float)
    for key, t in kernels:
        low = key.lower()
        by_kind[next((kind for kind, marks in KINDS if any(m in low for m in marks)), "other")] += t
    print(f"[profile] {name}, batch {len(tokens)}: {total / 1e3:.1f} ms of kernels per call", file=sys.stderr)
    for kind, t in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:40s} {t / 1e3:8.1f} ms {100 * t / total:5.1f} %", file=sys.stderr)
    for key, t in sorted(kernels, key=lambda kt: -kt[1])[:12]:
        print(f"    {t / 1e3:8.2f} ms  {key[:110]}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--models", choices=sorted(MODELS), default="real")
    parser.add_argument("--batches", type=lambda t: [int(x) for x in t.split(",")], default=[64, 128, 256])
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--impls", default="hf,fused,hf_eager_attention")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--commit")
    args = parser.parse_args(argv)
    if args.commit:
        os.environ["BENCH_COMMIT"] = args.commit
    device = torch.device(args.device)
    hf = build(args.models, device)
    config = hf.config
    tokens = torch.randint(0, 800, (8, args.length), device=device)
    with torch.inference_mode():
        reference = hf(input_ids=tokens).last_hidden_state.float()
    hf = hf.to(torch.bfloat16)
    impls = {
        "hf": lambda: TextEncoder(hf, "last_hidden_state"),
        "hf_eager_attention": lambda: _with_attention(TextEncoder(hf, "last_hidden_state"), "eager"),
        "fused": lambda: FusedT5Encoder(hf),
    }
    flops = flops_per_sample(config, args.length)
    common = {"length": args.length, "models": args.models, "dtype": "bfloat16", "flops_per_sample": flops}
    for name in args.impls.split(","):
        eager = impls[name]()
        compiled = torch.compile(eager, dynamic=False)
        with torch.inference_mode():
            out = compiled(tokens).float()
            err = out - reference
            emit(BENCH, f"{name}.max_abs_error", round(err.abs().max().item(), 5), "", reference_rms=round(reference.pow(2).mean().sqrt().item(), 4), **common)
            emit(BENCH, f"{name}.rms_error", round(err.pow(2).mean().sqrt().item(), 6), "", **common)
            for batch in args.batches:
                ids = torch.randint(0, 800, (batch, args.length), device=device)
                seconds = timed(compiled, ids, args.iters)
                emit(BENCH, f"{name}.samples_per_s", round(batch / seconds, 2), "samples/s", batch=batch, **common)
                emit(BENCH, f"{name}.tflops", round(batch * flops / seconds / 1e12, 1), "TFLOP/s", batch=batch, **common)
            if args.profile:
                middle = args.batches[len(args.batches) // 2]
                profile(name, compiled, torch.randint(0, 800, (middle, args.length), device=device))
        del eager, compiled
        torch.cuda.empty_cache()
    return 0


def _with_attention(encoder: TextEncoder, implementation: str) -> TextEncoder:
    encoder.hf_module.config._attn_implementation = implementation
    return encoder


if __name__ == "__main__":
    sys.exit(main())
