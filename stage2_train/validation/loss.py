"""Validation loss on a held-out Stage 1 dataset, at SD3's stratified timesteps, with every draw fixed.

TorchTitan's ``FluxValidator`` encodes images and captions online and draws noise from the global RNG.
Here the inputs are what Stage 1 stored for a validation dataset encoded like the training set, and
nothing is random between calls: validation sample ``i`` is seen at timestep
``STRATIFIED_TIMESTEPS[i % 8]`` (TorchTitan's round robin; all eight with ``validation.all_timesteps``),
with ε (the AE posterior sample) and noise from a generator seeded by (``validation.seed``, i, timestep),
and without prompt dropout (compact text: batches trimmed and masked as in training). The loss is the training loss's math — squared error summed over every
rank's items, divided by their latent count — so a curve is comparable across runs, resumes and world
sizes (the items change only with ``validation.steps`` x global batch, or by the < world-size samples a
split drops).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.utils.data import DataLoader
from torchtitan.components.loss import LossFunction
from torchtitan.config import JobConfig
from torchtitan.distributed import utils as dist_utils
from torchtitan.models.flux.model.autoencoder import AutoEncoderParams

from shared import contract
from stage2_train.data.compact_text import TEXT_MASK, TextTrim
from stage2_train.data.dataset import PrecomputedDataset, collate
from stage2_train.data.loader import loader_options
from stage2_train.step import FlowMatchingBatch, flow_matching_inputs, latents_from_moments, mixed_seed

STRATIFIED_TIMESTEPS = tuple(1 / 8 * (i + 0.5) for i in range(8))
"""TorchTitan's ``FluxValidationDataset`` timesteps (SD3 paper, section 5.1)."""
DRAW_STREAM = 1
"""Tags the validation draws' seeds, apart from every other stream seeded from ``validation.seed``."""


def rank_batches(num_samples: int, batch_size: int, steps: int, dp_rank: int, dp_world_size: int) -> list[list[int]]:
    """This rank's validation batches: the first ``steps`` global batches of the dataset (all of it for
    -1), cut into equal contiguous shares so every rank runs the same number of forward passes."""
    total = num_samples if steps == -1 else min(num_samples, steps * batch_size * dp_world_size)
    share = total // dp_world_size
    if share == 0:
        raise ValueError(f"a validation set of {num_samples} samples cannot give each of {dp_world_size} ranks one")
    mine = range(dp_rank * share, (dp_rank + 1) * share)
    return [list(mine[start : start + batch_size]) for start in range(0, share, batch_size)]


def fixed_draws(seed: int, samples: list[int], timesteps: list[int], shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε, noise) [n, *shape] for each (sample, timestep number): drawn on the CPU, so they are the same
    on any device and whatever batch the item falls in."""
    eps, noise = [], []
    for sample, timestep in zip(samples, timesteps):
        generator = torch.Generator().manual_seed(mixed_seed(seed, DRAW_STREAM, sample, timestep))
        eps.append(torch.randn(shape, generator=generator))
        noise.append(torch.randn(shape, generator=generator))
    return torch.stack(eps), torch.stack(noise)


@torch.no_grad()
def validation_batch(
    inputs: dict[str, torch.Tensor], samples: torch.Tensor, ae: AutoEncoderParams, seed: int, all_timesteps: bool
) -> FlowMatchingBatch:
    """Stored encodings of validation ``samples`` (global indices; tensors on the device) -> model inputs."""
    x = {name: tensor.float() for name, tensor in inputs.items() if name != TEXT_MASK}
    device = x[contract.AE_MEAN].device
    if all_timesteps:
        rows = torch.arange(len(samples)).repeat_interleave(len(STRATIFIED_TIMESTEPS))
        timestep_ids = torch.arange(len(STRATIFIED_TIMESTEPS)).repeat(len(samples))
    else:
        rows = torch.arange(len(samples))
        timestep_ids = samples.cpu() % len(STRATIFIED_TIMESTEPS)
    eps, noise = fixed_draws(seed, samples.cpu()[rows].tolist(), timestep_ids.tolist(), x[contract.AE_MEAN].shape[1:])
    rows = rows.to(device)
    x0 = latents_from_moments(x[contract.AE_MEAN][rows], x[contract.AE_LOGVAR][rows], ae, eps.to(device))
    timesteps = torch.tensor(STRATIFIED_TIMESTEPS, device=device)[timestep_ids.to(device)]
    mask = inputs[TEXT_MASK][rows] if TEXT_MASK in inputs else None
    return flow_matching_inputs(x0, noise.to(device), timesteps, x[contract.T5][rows], x[contract.CLIP][rows], mask)


class ValidationLoss:
    """This rank's fixed share of a validation dataset, and the global loss of a model on it."""

    def __init__(self, dataset: PrecomputedDataset, job_config: JobConfig, dp_rank: int, dp_world_size: int) -> None:
        config = job_config.validation
        self.seed = config.seed
        self.all_timesteps = config.all_timesteps
        batches = rank_batches(len(dataset), config.local_batch_size, config.steps, dp_rank, dp_world_size)
        self.num_samples = sum(map(len, batches)) * dp_world_size
        self.loader = DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=functools.partial(collate, text_trim=TextTrim(job_config.stage2.text_bucket)),
            **loader_options(config.dataloader),
        )

    @torch.no_grad()
    def __call__(
        self,
        model: nn.Module,
        ae: AutoEncoderParams,
        device: torch.device,
        loss_fn: LossFunction,
        context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        batch_mesh: DeviceMesh | None = None,
    ) -> float:
        """Squared error / latent count over every rank's items (``batch_mesh``: the data-parallel ranks)."""
        squared_error = torch.zeros((), dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.float64, device=device)
        for inputs, samples in self.loader:
            inputs = {name: tensor.to(device, non_blocking=True) for name, tensor in inputs.items()}
            batch = validation_batch(inputs, samples, ae, self.seed, self.all_timesteps)
            with context():
                prediction = model(**batch.model_inputs())
                squared_error += loss_fn(prediction, batch.target).double()
            count += batch.target.numel()
        if batch_mesh is None:
            return (squared_error / count).item()
        return dist_utils.dist_sum(squared_error, batch_mesh) / dist_utils.dist_sum(count, batch_mesh)
