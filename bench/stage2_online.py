"""TorchTitan 0.2.2's stock online Flux trainer, as ``bench/stage2_train.py`` runs it.

    torchrun --nproc_per_node 1 -m bench.stage2_online --job.config_file X.toml [--section.key value …]

This is ``python -m torchtitan.models.flux.train`` (``FluxTrainer``: its WebDataset loader with JPEG
decoding and tokenisation in the loop, T5 + CLIP + AE run every step, its ``train_step``) with only
what a one-GPU benchmark needs, all of it here (nothing in site-packages is edited):

1. **Flavor.** ``$BENCH_FLAVOR`` ({"name", "depth", "single", "tiny"}) is added to
   ``torchtitan.models.flux.flux_args``: FLUX.1-schnell at reduced depth, or a tiny model for the CPU
   smoke test whose widths match the tiny encoder configs.
2. **Encoders built on the device.** ``[training] test_mode`` random-initialises T5 and CLIP from the
   ``config.json`` in their folders (real sizes: T5-XXL 4.8 B, CLIP-L text 123 M) and the AE at its real
   shape. HuggingFace would build and initialise them on the CPU and then copy them; here they are
   constructed under ``torch.device(<the GPU>)`` — the same modules and init, seconds instead of minutes.
3. **Encoders in bf16.** On one GPU (no FSDP) ``FluxTrainer`` keeps T5/CLIP/AE in fp32
   (``_dtype`` is bf16 only when FSDP shards). Multi-GPU runs — the way users run it — have them in
   ``mixed_precision_param`` (bf16); so after construction they are cast to it and ``_dtype`` set to
   it. The transformer is untouched (fp32 master weights under TorchTitan's autocast, as stock).
4. **Compiled blocks (variant "online_compiled").** With ``compile.enable`` and "model" in
   ``compile.components``, each Flux block is ``torch.compile``'d (fullgraph, after activation
   checkpointing, before FSDP — TorchTitan's order for its other models). Stock compiles only the loss.
5. **CPU.** Without CUDA, Stage 2's device fallback (``stage2_train.device``) puts TorchTitan on the
   CPU with gloo, and the process exits hard after a clean run (gloo's finalisation abort) — smoke tests.
6. **Bench hooks** (``bench.stage2_hooks``): metrics file and phase plan.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import sys

import torch
import torchtitan.models.flux as flux
import torchtitan.models.flux.train as flux_train
import torchtitan.train
from torch import nn
from torchtitan.config import TORCH_DTYPE_MAP, JobConfig
from torchtitan.distributed import ParallelDims
from torchtitan.models.flux.infra import parallelize as flux_parallelize
from torchtitan.models.flux.model.args import FluxModelArgs
from torchtitan.models.flux.model.hf_embedder import FluxEmbedder
from torchtitan.tools.logging import logger

from stage2_train.device import use_cpu_if_no_cuda
from stage2_train.flavors import FLAVORS

import bench.stage2_hooks  # noqa: F401  (installs the metrics file and the phase plan)

def bench_flavor(spec: dict) -> FluxModelArgs:
    if spec.get("tiny"):
        # Stage 2's flux-tiny widths (the tiny encoders' T5/CLIP width 32), as TorchTitan's own args.
        tiny = FLAVORS["flux-tiny"]
        args = {f.name: getattr(tiny, f.name) for f in dataclasses.fields(FluxModelArgs)}
        return FluxModelArgs(**{**args, "depth": spec["depth"], "depth_single_blocks": spec["single"]})
    return dataclasses.replace(flux.flux_args["flux-schnell"], depth=spec["depth"], depth_single_blocks=spec["single"])


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class DeviceInitFluxEmbedder(FluxEmbedder):
    """``FluxEmbedder`` constructed (and randomly initialised) directly on the training device."""

    def __init__(self, version: str, random_init: bool = False, **hf_kwargs) -> None:
        with torch.device(_device()):
            super().__init__(version, random_init=random_init, **hf_kwargs)


class BenchFluxTrainer(flux_train.FluxTrainer):
    def __init__(self, job_config: JobConfig) -> None:
        super().__init__(job_config)
        dtype = TORCH_DTYPE_MAP[job_config.training.mixed_precision_param]
        if self._dtype != dtype:
            self.t5_encoder.to(dtype=dtype)
            self.clip_encoder.to(dtype=dtype)
            self.autoencoder.to(dtype=dtype)
            self._dtype = dtype
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        sizes = {
            name: (sum(p.numel() for p in module.parameters()), next(module.parameters()).dtype)
            for name, module in (("t5", self.t5_encoder), ("clip", self.clip_encoder), ("ae", self.autoencoder))
        }
        logger.info(
            "[bench] encoders in the loop: "
            + ", ".join(f"{name} {n / 1e6:,.1f} M params {dt}" for name, (n, dt) in sizes.items())
        )
        bench.stage2_hooks.record(
            "encoders", encoders={name: {"params": n, "dtype": str(dt)} for name, (n, dt) in sizes.items()}
        )


_stock_parallelize_flux = flux.parallelize_flux


def parallelize_flux_compiled_blocks(model: nn.Module, parallel_dims: ParallelDims, job_config: JobConfig) -> nn.Module:
    """Stock ``parallelize_flux`` plus per-block ``torch.compile`` when "model" is a compile component."""
    if not (job_config.compile.enable and "model" in job_config.compile.components):
        return _stock_parallelize_flux(model, parallel_dims, job_config)
    if parallel_dims.cp_enabled:
        raise ValueError("the benchmark does not run context parallelism")
    if job_config.activation_checkpoint.mode != "none":
        flux_parallelize.apply_ac(model, job_config.activation_checkpoint)
    for parent in (model.double_blocks, model.single_blocks):
        for name, block in parent.named_children():
            parent.register_module(name, torch.compile(block, backend=job_config.compile.backend, fullgraph=True))
    logger.info(f"[bench] compiled each Flux block (backend {job_config.compile.backend})")
    if parallel_dims.fsdp_enabled:
        names = ["dp_replicate", "fsdp"] if parallel_dims.dp_replicate_enabled else ["fsdp"]
        flux_parallelize.apply_fsdp(
            model,
            parallel_dims.get_mesh(names),
            param_dtype=TORCH_DTYPE_MAP[job_config.training.mixed_precision_param],
            reduce_dtype=TORCH_DTYPE_MAP[job_config.training.mixed_precision_reduce],
            cpu_offload=job_config.training.enable_cpu_offload,
        )
    return model


def main() -> None:
    use_cpu_if_no_cuda()
    spec = json.loads(os.environ["BENCH_FLAVOR"])
    flux.flux_args[spec["name"]] = bench_flavor(spec)
    flux.parallelize_flux = parallelize_flux_compiled_blocks  # read by flux.get_train_spec()
    flux_train.FluxEmbedder = DeviceInitFluxEmbedder  # the name FluxTrainer.__init__ builds
    torchtitan.train.main(BenchFluxTrainer)  # raises on failure: the normal exit reports it
    gc.collect()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
