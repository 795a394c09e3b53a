"""Flux sampling from stored prompt encodings: TorchTitan's ``denoise`` with the starting noise given.

TorchTitan's ``denoise`` draws its starting noise from the global RNG, one draw for the whole batch, so
a picture would depend on how the prompts are split across ranks (and sampling would move the global
RNG). Here each prompt's noise comes from its own seed (``prompt_noise``); the loop is TorchTitan's:
its shifted schedule (``get_schedule``), Euler steps, and classifier-free guidance over
[unconditional, conditional] halves of one batch. A test checks it equals TorchTitan's ``denoise``.
Compact text adds the prompts' (and the empty prompt's) text masks, passed to the masked model.
"""

from __future__ import annotations

import torch
from torch import nn
from torchtitan.models.flux.inference.sampling import get_schedule
from torchtitan.models.flux.utils import create_position_encoding_for_latents, pack_latents, unpack_latents

from stage2_train.step import POSITION_DIM, mixed_seed

NOISE_STREAM = 2
"""Tags the images' noise seeds, apart from the validation draws (``validation_loss.DRAW_STREAM``)."""


def prompt_noise(seed: int, prompts: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Starting noise [n, *shape] of each prompt (by its index in the prompt set), drawn on the CPU: the
    same on every call, device and world size, so successive grids show one composition evolve."""
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(mixed_seed(seed, NOISE_STREAM, p))) for p in prompts]
    )


@torch.no_grad()
def denoise(
    model: nn.Module,
    noise: torch.Tensor,
    t5: torch.Tensor,
    clip: torch.Tensor,
    steps: int,
    empty: tuple[torch.Tensor, torch.Tensor] | None = None,
    guidance_scale: float = 1.0,
    txt_masks: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Latents [n, C, h, w] from ``noise`` [n, C, h, w] and prompt encodings ``t5`` [n, L, D], ``clip`` [n, D];
    with ``empty`` (the empty prompt's t5 [n, L, D] and clip [n, D]) guided by ``guidance_scale``. Compact
    text: ``txt_masks`` are the prompts' and the empty prompt's masks [n, L]."""
    height, width = noise.shape[-2:]
    timesteps = get_schedule(steps, height * width, shift=True)
    latents = noise
    if empty is not None:
        latents = torch.cat([latents, latents])
        t5, clip = torch.cat([empty[0], t5]), torch.cat([empty[1], clip])
    masked = {}
    if txt_masks is not None:
        masked["txt_mask"] = txt_masks[0] if empty is None else torch.cat([txt_masks[1], txt_masks[0]])
    rows = latents.shape[0]
    img_ids = create_position_encoding_for_latents(rows, height, width, POSITION_DIM).to(latents)
    txt_ids = torch.zeros(rows, t5.shape[1], POSITION_DIM).to(latents)
    latents = pack_latents(latents)
    for t_curr, t_prev in zip(timesteps[:-1], timesteps[1:]):
        t_vec = torch.full((rows,), t_curr, dtype=latents.dtype, device=latents.device)
        prediction = model(img=latents, img_ids=img_ids, txt=t5, txt_ids=txt_ids, y=clip, timesteps=t_vec, **masked)
        if empty is not None:
            unconditional, conditional = prediction.chunk(2)
            prediction = (unconditional + guidance_scale * (conditional - unconditional)).repeat(2, 1, 1)
        latents = latents + (t_prev - t_curr) * prediction
    if empty is not None:
        latents = latents.chunk(2)[1]
    return unpack_latents(latents, height, width)
