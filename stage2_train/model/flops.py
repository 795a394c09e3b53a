"""Training FLOPs of a Flux transformer, TorchTitan 0.3.0's formula (0.2.2 has none for Flux).

Per token: 6 FLOPs per parameter (forward + backward), minus one side of each double block (an image
token only goes through the image stream, a text token through the text stream), minus the modulation
layers (they run once per sample on the conditioning vector, not per token), plus the attention
products (6 · hidden · sequence per block: half of what Flux's non-causal attention computes, kept as
the formula has it; recomputation is not counted). tests/test_flops.py checks all of it against torch's
FlopCounterMode: the whole model within 1 %.
FLUX.1-schnell at 256 px (256 image + 256 text tokens) comes to ≈ 20.2 TFLOP per sample.
"""

from __future__ import annotations

from torchtitan.models.flux.model.args import FluxModelArgs
from torchtitan.models.flux.model.autoencoder import AutoEncoderParams


def image_tokens(image_size: int, ae: AutoEncoderParams, patch: int) -> int:
    """Tokens one image becomes: latent pixels (AE downsamples by 2^(levels-1)) in patch x patch groups."""
    latent = image_size // 2 ** (len(ae.ch_mult) - 1)
    return (latent // patch) ** 2


def flux_training_flops_per_token(args: FluxModelArgs, nparams: int, seq_len: int) -> int:
    h, r = args.hidden_size, args.mlp_ratio
    flops = 6 * nparams
    # One stream of a double block per token: qkv 3h², proj h², mlp 2rh².
    flops -= 6 * int(h * h * (4 + 2 * r)) * args.depth
    # Modulation (double 12h², single 3h², final 2h²) runs once per sample, amortised over the sequence.
    modulation = 12 * h * h * args.depth + 3 * h * h * args.depth_single_blocks + 2 * h * h
    flops -= 6 * modulation * (seq_len - 1) // seq_len
    flops += 6 * h * seq_len * (args.depth + args.depth_single_blocks)
    return flops


def flux_training_flops_per_sample(args: FluxModelArgs, nparams: int, seq_len: int) -> int:
    """Forward + backward FLOPs of one training sample whose sequence is ``seq_len`` tokens."""
    return flux_training_flops_per_token(args, nparams, seq_len) * seq_len
