"""Model flavors Stage 2 trains: TorchTitan's Flux shapes, plus a tiny one for tests and a reduced-depth
schnell for benchmarks.

The flavors are ``PrecomputedFluxArgs``: TorchTitan's ``FluxModelArgs`` that also know the sequence a
training sample makes (image patches + T5 positions), so TorchTitan's metrics get a FLOP count per
sample (0.2.2 has none for Flux) and report MFU — and whether the dataset's text is compact, which picks
the model (``masked_attention.build_flux_model``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from torchtitan.config import JobConfig
from torchtitan.models.flux import flux_args
from torchtitan.models.flux.model.args import FluxModelArgs
from torchtitan.models.flux.model.autoencoder import AutoEncoderParams

from shared import contract

from stage2_train.model.flops import flux_training_flops_per_sample, image_tokens

LATENT_PATCH = 2
"""Flux packs 2 x 2 latent pixels into one token (``pack_latents``)."""


@dataclass
class PrecomputedFluxArgs(FluxModelArgs):
    """``FluxModelArgs`` plus the per-sample sequence and the text mode, filled from the job config."""

    image_size: int = 256
    text_tokens: int = 256
    """T5 positions per sample; the FLOP count (and MFU) counts them all, also for compact text."""
    compact_text: bool = False
    """The training dataset's text is compact (``Identity.text_mode``): the model masks padded T5 keys."""

    def update_from_config(self, job_config: JobConfig, **kwargs) -> None:
        self.image_size = job_config.training.img_size
        self.text_tokens = job_config.encoder.max_t5_encoding_len
        # The trainer's data loader has opened the dataset already (or refused); a plan may have none.
        dataset = job_config.training.dataset_path
        self.compact_text = (
            bool(dataset) and Path(dataset, contract.DATASET_FILE).is_file() and contract.read_identity(dataset).compact_text
        )

    def get_nparams_and_flops(self, model: nn.Module, seq_len: int) -> tuple[int, int]:
        """Parameters and training FLOPs per *sample*: Stage 2 counts samples where TorchTitan counts
        tokens, so its ``tps``/``tflops``/``mfu`` read as samples/s/GPU and real MFU."""
        del seq_len  # the language-model sequence length does not apply
        nparams = sum(p.numel() for p in model.parameters())
        sequence = image_tokens(self.image_size, self.autoencoder_params, LATENT_PATCH) + self.text_tokens
        return nparams, flux_training_flops_per_sample(self, nparams, sequence)


def _precomputed(args: FluxModelArgs, **changes: object) -> PrecomputedFluxArgs:
    return PrecomputedFluxArgs(**{**{f.name: getattr(args, f.name) for f in dataclasses.fields(args)}, **changes})


FLAVORS: dict[str, PrecomputedFluxArgs] = {
    "flux-schnell": _precomputed(flux_args["flux-schnell"]),
    "flux-dev": _precomputed(flux_args["flux-dev"]),
    # Benchmark size: 8 double + 16 single blocks (5.0 B parameters), fits one GPU with FSDP.
    "flux-schnell-8x16": _precomputed(flux_args["flux-schnell"], depth=8, depth_single_blocks=16),
    # 4 double + 8 single blocks (2.5 B): what an H100 80 GB trains with room for activations (calibration);
    # fp32 + AdamW ~30 GB, the checkpoint benchmark's size (twice the 8 + 16-block one does not fit 64 GiB of disk).
    "flux-schnell-4x8": _precomputed(flux_args["flux-schnell"], depth=4, depth_single_blocks=8),
    # Matches the tiny test encoders (T5 width 32, CLIP width 32, a 16-channel AE with 8x downsampling).
    "flux-tiny": PrecomputedFluxArgs(
        in_channels=64,
        out_channels=64,
        vec_in_dim=32,
        context_in_dim=32,
        hidden_size=64,
        mlp_ratio=4.0,
        num_heads=2,
        depth=1,
        depth_single_blocks=1,
        axes_dim=(8, 12, 12),
        theta=10_000,
        qkv_bias=True,
        autoencoder_params=AutoEncoderParams(
            resolution=256,
            in_channels=3,
            ch=32,
            out_ch=3,
            ch_mult=(1, 1, 1, 1),
            num_res_blocks=1,
            z_channels=16,
            scale_factor=0.3611,
            shift_factor=0.1159,
        ),
    ),
}
