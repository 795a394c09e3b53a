"""Sample images for the prompt set while training, as one captioned grid per call.

Every rank denoises an equal share of the prompts (under FSDP each forward pass needs every rank) and
the latents are all-gathered; rank 0 alone decodes them with the AE decoder — loaded on first use, from
the assets directory the training dataset recorded (or ``encoder.autoencoder_path``), checked to be the
AE the dataset was encoded with — and writes the grid (``shared.latent_grid``) to
``<dump_folder>/<validation.save_img_folder>/step-NNNNNN.png``.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torchtitan.config import JobConfig
from torchtitan.models.flux.model.autoencoder import AutoEncoder
from torchtitan.tools.logging import logger

from shared import contract
from shared.atomic import atomic_write
from shared.contract import Identity
from shared.latent_grid import ae_assets_dir, decode_latents, grid_image, load_dataset_ae
from stage2_train.data.compact_text import text_mask
from stage2_train.validation.prompt_set import PromptSet
from stage2_train.validation.sampling import denoise, prompt_noise


class ImageSampler:
    def __init__(self, prompt_set: PromptSet, dataset: Path, identity: Identity, job_config: JobConfig) -> None:
        config = job_config.validation
        self.prompt_set = prompt_set
        self.dataset = dataset
        self.identity = identity
        self.ae_dir = ae_assets_dir(dataset, job_config.encoder.autoencoder_path or None)  # fail now, load later
        self.seed = config.seed
        self.steps = config.denoising_steps
        self.guided = config.enable_classifier_free_guidance
        self.guidance_scale = config.classifier_free_guidance_scale
        self.folder = Path(job_config.job.dump_folder) / config.save_img_folder
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        # Equal contiguous shares, the last prompt repeated to fill them; the gather restores file order.
        count = len(prompt_set.prompts)
        share = math.ceil(count / self.world)
        padded = list(range(count)) + [count - 1] * (share * self.world - count)
        self.mine = padded[self.rank * share : (self.rank + 1) * share]
        self._ae: AutoEncoder | None = None

    def sample(
        self,
        model: nn.Module,
        device: torch.device,
        context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> torch.Tensor | None:
        """Every prompt's latents [n, C, h, w] on rank 0 (``None`` elsewhere); every rank must call this."""
        size = self.identity.latent_size
        noise = prompt_noise(self.seed, self.mine, (self.identity.latent_channels, size, size)).to(device)
        t5, clip = self.prompt_set.t5[self.mine].to(device), self.prompt_set.clip[self.mine].to(device)
        empty = None
        if self.guided:
            n = len(self.mine)
            empty = (
                self.prompt_set.empty[contract.T5].to(device).expand(n, -1, -1),
                self.prompt_set.empty[contract.CLIP].to(device).expand(n, -1),
            )
        masks = None
        if self.prompt_set.t5_length is not None:  # compact text
            length = self.prompt_set.t5.shape[1]
            empty_length = self.prompt_set.empty[contract.T5_LENGTH].view(1).expand(len(self.mine))
            masks = (
                text_mask(self.prompt_set.t5_length[self.mine], length).to(device),
                text_mask(empty_length, length).to(device),
            )
        with context():
            latents = denoise(model, noise, t5, clip, self.steps, empty, self.guidance_scale, masks).float()
        if self.world > 1:
            shares = [torch.empty_like(latents) for _ in range(self.world)]
            dist.all_gather(shares, latents)
            latents = torch.cat(shares)
        return latents[: len(self.prompt_set.prompts)] if self.rank == 0 else None

    def write(self, latents: torch.Tensor, step: int) -> tuple[Path, Image.Image]:
        """Decode ``latents`` and write the captioned grid for ``step``; returns its path and image."""
        grid = grid_image(decode_latents(self._decoder(latents.device), latents), self.prompt_set.prompts)
        path = self.folder / f"step-{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))  # a viewer never sees half a PNG
        return path, grid

    def _decoder(self, device: torch.device) -> AutoEncoder:
        if self._ae is None:
            started = time.perf_counter()
            ae, weights, checked = load_dataset_ae(self.dataset, self.identity, self.ae_dir, device)
            del ae.encoder  # decoding needs the decoder alone
            self._ae = ae
            logger.info(
                f"AE decoder for sample images loaded from {weights} "
                f"({'SHA-256 checked' if checked else 'architecture checked'}) in {time.perf_counter() - started:.1f} s"
            )
        return self._ae
