"""TorchTitan 0.2.2's stock online Flux trainer, as the Stage 2 benchmark runs it.

    torchrun --nproc_per_node 1 -m bench.stage2.online --job.config_file bench/stage2/online.toml [--section.key value …]

This is ``python -m torchtitan.models.flux.train`` (``FluxTrainer``: its WebDataset loader with JPEG
decoding and tokenisation in the loop, T5 + CLIP + AE run every step, its ``train_step``) with what a
one-GPU benchmark needs, all of it here (nothing in site-packages is edited):

1. **Flavors.** Stage 2's flavors (``flux-schnell-8x16``, ``flux-tiny``) are added to TorchTitan's
   ``flux_args``, so both trainers build the same model.
2. **Encoders built on the device** from their ``config.json`` (test mode, random weights of real
   size): HuggingFace would build them on the CPU and copy them — seconds instead of minutes.
3. **Encoders in bf16.** On one GPU (no FSDP) ``FluxTrainer`` keeps T5/CLIP/AE in fp32; multi-GPU runs,
   the way users run it, have them in ``mixed_precision_param`` (bf16), so they are cast to it. The
   transformer is untouched (fp32 master weights under TorchTitan's autocast, as stock).
4. **Compiled blocks** (variant "online_compiled"): with "model" in ``compile.components`` each Flux
   block is ``torch.compile``'d (stock compiles only the loss), as ``stage2_train.infra.parallelize`` does.
5. **Metrics records** to ``[metrics] jsonl_file`` through Stage 2's ``add_jsonl_logger``.
6. **CPU.** Without CUDA, Stage 2's device fallback puts TorchTitan on the CPU with gloo (smoke runs).
"""

from __future__ import annotations

import dataclasses

import torch
import torchtitan.models.flux as flux
import torchtitan.models.flux.train as flux_train
from torch import nn
from torchtitan.components.metrics import build_metrics_processor
from torchtitan.config import TORCH_DTYPE_MAP, JobConfig
from torchtitan.distributed import ParallelDims
from torchtitan.models.flux.model.args import FluxModelArgs
from torchtitan.models.flux.model.hf_embedder import FluxEmbedder
from torchtitan.tools.logging import logger

from stage2_train.infra.parallelize import apply_compile
from stage2_train.launch import run_trainer
from stage2_train.model.flavors import FLAVORS
from stage2_train.monitor.metrics import add_jsonl_logger

_stock_parallelize_flux = flux.parallelize_flux
_stock_train_spec = flux.get_train_spec


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


class DeviceInitFluxEmbedder(FluxEmbedder):
    """``FluxEmbedder`` constructed (and randomly initialised) directly on the training device."""

    def __init__(self, version: str, random_init: bool = False, **hf_kwargs) -> None:
        with torch.device(_device()):
            super().__init__(version, random_init=random_init, **hf_kwargs)


class BenchFluxTrainer(flux_train.FluxTrainer):
    """``FluxTrainer`` with its encoders in ``mixed_precision_param``, as multi-GPU runs have them."""

    def __init__(self, job_config: JobConfig) -> None:
        super().__init__(job_config)
        dtype = TORCH_DTYPE_MAP[job_config.training.mixed_precision_param]
        if self._dtype != dtype:
            for encoder in (self.t5_encoder, self.clip_encoder, self.autoencoder):
                encoder.to(dtype=dtype)
            self._dtype = dtype
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        logger.info(f"[bench] encoders in the loop in {dtype}")


def parallelize_flux_compiled_blocks(model: nn.Module, parallel_dims: ParallelDims, job_config: JobConfig) -> nn.Module:
    """Stock ``parallelize_flux``, each block compiled first when "model" is a compile component
    (stock applies AC inside, so blocks are compiled inside their checkpoint wrappers' contents)."""
    if job_config.compile.enable and "model" in job_config.compile.components:
        apply_compile(model, job_config.compile)
    return _stock_parallelize_flux(model, parallel_dims, job_config)


def build_jsonl_metrics_processor(job_config: JobConfig, parallel_dims: ParallelDims, *args, **kwargs):
    processor = build_metrics_processor(job_config, parallel_dims, *args, **kwargs)
    add_jsonl_logger(processor, job_config)
    return processor


def bench_train_spec():
    return dataclasses.replace(_stock_train_spec(), build_metrics_processor_fn=build_jsonl_metrics_processor)


def main() -> None:
    for name, args in FLAVORS.items():
        flux.flux_args.setdefault(name, FluxModelArgs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FluxModelArgs)}))
    flux.parallelize_flux = parallelize_flux_compiled_blocks  # read by flux.get_train_spec()
    flux.get_train_spec = bench_train_spec
    flux_train.FluxEmbedder = DeviceInitFluxEmbedder  # the name FluxTrainer.__init__ builds
    run_trainer(BenchFluxTrainer)


if __name__ == "__main__":
    main()
