"""A training step's model inputs from stored encodings — the math of TorchTitan's online Flux step.

Online (``FluxTrainer.forward_backward_step``): ``AutoEncoder.encode`` samples its diagonal Gaussian
(``randn_like(mean)``) and applies ``scale·(z − shift)``; then ``noise = randn_like(latents)``,
``t = rand(bsz)``, ``x_t = (1−t)·x0 + t·noise``, target ``noise − x0``, 2 x 2 packing, image position
ids, zero text position ids. Here the same, drawn in the same order (ε, noise, t) from a generator
seeded by (seed, step, data-parallel rank) — so a resumed step draws what the uninterrupted one drew,
and the online step run after ``torch.manual_seed(step_seed(...))`` sees the same numbers. With gradient
accumulation (``accumulation.py``) micro-batch m > 0 of a step mixes m into that seed; micro-batch 0
draws what a step without accumulation draws. Prompt
dropout (stored empty-prompt encodings, T5 and CLIP independently) is drawn last, after t. Compact text
adds a mask of the real T5 tokens (``data.compact_text``): dropout substitutes the empty prompt's too,
and the model takes it as ``txt_mask``; the exact mode has none and calls TorchTitan's model as before.

All of it runs in float32 on the training device; the model casts to its own compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchtitan.models.flux.model.autoencoder import AutoEncoderParams
from torchtitan.models.flux.utils import create_position_encoding_for_latents, pack_latents

from shared import contract
from stage2_train.data.compact_text import TEXT_MASK, text_mask

POSITION_DIM = 3
"""Flux's position ids are (0, row, column)."""


def mixed_seed(*values: int) -> int:
    """A 63-bit seed, well mixed from ``values`` so neighbouring tuples give unrelated streams."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, dtype=np.uint64)[0] >> 1)


def step_seed(seed: int, step: int, dp_rank: int, micro_batch: int = 0) -> int:
    return mixed_seed(seed, step, dp_rank) if micro_batch == 0 else mixed_seed(seed, step, dp_rank, micro_batch)


def step_generator(
    seed: int, step: int, dp_rank: int, device: torch.device, micro_batch: int = 0
) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(step_seed(seed, step, dp_rank, micro_batch))


def sample_latents(
    mean: torch.Tensor, logvar: torch.Tensor, ae: AutoEncoderParams, generator: torch.Generator
) -> torch.Tensor:
    """``AutoEncoder.encode`` from its moments, ε drawn from ``generator``."""
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return latents_from_moments(mean, logvar, ae, eps)


def latents_from_moments(
    mean: torch.Tensor, logvar: torch.Tensor, ae: AutoEncoderParams, eps: torch.Tensor
) -> torch.Tensor:
    """z = scale·(mean + exp(½·logvar)·ε − shift), in ``AutoEncoder.encode``'s op order."""
    return ae.scale_factor * (mean + torch.exp(0.5 * logvar) * eps - ae.shift_factor)


def drop_prompts(
    t5: torch.Tensor,
    clip: torch.Tensor,
    empty_prompt: dict[str, torch.Tensor],
    prob: float,
    generator: torch.Generator,
    txt_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Replace each sample's T5 and (independently) CLIP encoding by the empty prompt's with probability
    ``prob``; with a text mask (compact text; ``t5`` trimmed to its length) the T5 mask too. Always draws,
    so the generator's stream does not depend on ``prob``."""
    drop = torch.rand((t5.shape[0], 2), generator=generator, device=t5.device) < prob
    length = t5.shape[1]
    t5 = torch.where(drop[:, 0, None, None], empty_prompt[contract.T5][:length], t5)
    clip = torch.where(drop[:, 1, None], empty_prompt[contract.CLIP], clip)
    if txt_mask is not None:
        empty_mask = text_mask(empty_prompt[contract.T5_LENGTH].view(1), length)
        txt_mask = torch.where(drop[:, 0, None], empty_mask, txt_mask)
    return t5, clip, txt_mask


@dataclass
class FlowMatchingBatch:
    """``FluxModel.forward``'s arguments and the loss target, as the online step builds them."""

    img: torch.Tensor
    img_ids: torch.Tensor
    txt: torch.Tensor
    txt_ids: torch.Tensor
    y: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    txt_mask: torch.Tensor | None = None
    """Compact text: [B, L_txt] bool, True for real T5 tokens (``TextMaskedFluxModel``); exact: ``None``."""

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {
            "img": self.img,
            "img_ids": self.img_ids,
            "txt": self.txt,
            "txt_ids": self.txt_ids,
            "y": self.y,
            "timesteps": self.timesteps,
        }
        return inputs if self.txt_mask is None else inputs | {"txt_mask": self.txt_mask}


@torch.no_grad()
def flow_matching_batch(
    inputs: dict[str, torch.Tensor],
    empty_prompt: dict[str, torch.Tensor],
    ae: AutoEncoderParams,
    dropout_prob: float,
    generator: torch.Generator,
) -> FlowMatchingBatch:
    """Stored encodings of a batch (``t5``, ``clip``, ``ae_mean``, ``ae_logvar``, compact: ``t5_mask``; on
    the device) -> model inputs."""
    x = {name: tensor.float() for name, tensor in inputs.items() if name != TEXT_MASK}
    empty = {name: tensor if name == contract.T5_LENGTH else tensor.float() for name, tensor in empty_prompt.items()}
    x0 = sample_latents(x[contract.AE_MEAN], x[contract.AE_LOGVAR], ae, generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    timesteps = torch.rand((x0.shape[0],), generator=generator, device=x0.device)
    mask = inputs.get(TEXT_MASK)
    t5, clip, mask = drop_prompts(x[contract.T5], x[contract.CLIP], empty, dropout_prob, generator, mask)
    return flow_matching_inputs(x0, noise, timesteps, t5, clip, mask)


def flow_matching_inputs(
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    t5: torch.Tensor,
    clip: torch.Tensor,
    txt_mask: torch.Tensor | None = None,
) -> FlowMatchingBatch:
    """The online step's math once the draws are made: ``x_t = (1−t)·x0 + t·noise``, target ``noise − x0``,
    packed, with image and text position ids."""
    bsz, _, height, width = x0.shape
    sigmas = timesteps.view(-1, 1, 1, 1)
    latents = (1 - sigmas) * x0 + sigmas * noise
    with torch.device(x0.device):
        img_ids = create_position_encoding_for_latents(bsz, height, width, POSITION_DIM)
        txt_ids = torch.zeros(bsz, t5.shape[1], POSITION_DIM)
    return FlowMatchingBatch(
        img=pack_latents(latents),
        img_ids=img_ids,
        txt=t5,
        txt_ids=txt_ids,
        y=clip,
        timesteps=timesteps,
        target=pack_latents(noise - x0),
        txt_mask=txt_mask,
    )
