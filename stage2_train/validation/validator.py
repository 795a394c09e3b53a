"""Stage 2's validator (TorchTitan's ``build_validator_fn``): validation loss and sample images during
training, from stored encodings — no T5, CLIP or AE encoder is loaded.

TorchTitan's ``FluxValidator`` encodes images and prompts online, so it needs all three encoders. This
one, built when ``validation.enable`` is set, runs on TorchTitan's schedule (at step 1, then every
``freq`` steps, after that step's checkpoint):

* ``validation.dataset_path`` (a held-out Stage 1 dataset, identity equal to the training dataset's):
  the loss, deterministic (``stage2_train.validation.loss``), logged as TorchTitan logs validation
  (stdout, ``validation_metrics/loss`` to TensorBoard and wandb), every ``validation.freq`` steps.
* ``validation.prompts_path`` (a prompt set fitting the training dataset's text encoders): a grid of
  sample images (``stage2_train.validation.images``), saved as PNG and logged as ``validation_images/prompts``,
  every ``validation.image_freq`` steps.

Either path may be empty (that part is off). The seconds each part takes are logged
(``validation_metrics/loss_seconds``, ``validation_metrics/images_seconds``), so its cost to training
is visible; the AE decoder loads on the first image call, on rank 0 only.
"""

from __future__ import annotations

import contextlib
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from torchtitan.components.loss import LossFunction
from torchtitan.components.validate import BaseValidator, ValidationContext
from torchtitan.config import JobConfig
from torchtitan.distributed import ParallelDims
from torchtitan.tools.logging import logger

from shared import contract
from shared.contract import ContractError, Identity
from stage2_train.data.loader import open_dataset, precomputed_dataset
from stage2_train.model.flavors import FLAVORS
from stage2_train.monitor.metrics import SampleMetricsProcessor
from stage2_train.validation.images import ImageSampler
from stage2_train.validation.loss import STRATIFIED_TIMESTEPS, ValidationLoss
from stage2_train.validation.prompt_set import load_prompt_set

IMAGE_TAG = "validation_images/prompts"


class PrecomputedFluxValidator(BaseValidator):
    def __init__(
        self,
        job_config: JobConfig,
        dp_rank: int,
        dp_world_size: int,
        parallel_dims: ParallelDims,
        loss_fn: LossFunction,
        validation_context: ValidationContext,
        maybe_enable_amp: AbstractContextManager[None],
        metrics_processor: SampleMetricsProcessor,
    ) -> None:
        super().__init__(job_config)
        config = job_config.validation
        self.parallel_dims = parallel_dims
        self.loss_fn = loss_fn
        self.validation_context = validation_context
        self.maybe_enable_amp = maybe_enable_amp
        self.metrics_processor = metrics_processor
        self.device = torch.device("cpu")  # the trainer's, once it calls ``bind``
        self.ae_params = FLAVORS[job_config.model.flavor].autoencoder_params
        root, identity = open_dataset(job_config)
        self.loss = None
        if config.dataset_path:
            dataset = precomputed_dataset(
                check_held_out(Path(config.dataset_path), root, identity), identity, job_config.stage2.on_corrupt
            )
            self.loss = ValidationLoss(dataset, job_config, dp_rank, dp_world_size)
            timesteps = len(STRATIFIED_TIMESTEPS) if config.all_timesteps else 1
            logger.info(
                f"validation: {self.loss.num_samples} samples of {config.dataset_path} x {timesteps} timestep(s) "
                f"every {config.freq} steps"
            )
        self.images = None
        if config.prompts_path:
            if min(config.image_freq, config.denoising_steps) < 1 or config.save_img_count == 0 or config.save_img_count < -1:
                raise ValueError("validation.image_freq and denoising_steps must be positive; save_img_count positive or -1")
            prompt_set = load_prompt_set(config.prompts_path, identity, config.save_img_count)
            self.images = ImageSampler(prompt_set, root, identity, job_config)
            logger.info(
                f"validation: {len(prompt_set.prompts)} images of {config.prompts_path} every {config.image_freq} steps"
            )
        if self.loss is None and self.images is None:
            logger.info("validation: enabled, but neither validation.dataset_path nor prompts_path is set")

    def bind(self, device: torch.device, maybe_enable_amp: AbstractContextManager[None]) -> None:
        """The trainer's device and its final AMP context (it replaces TorchTitan's after building us)."""
        self.device = device
        self.maybe_enable_amp = maybe_enable_amp

    def _loss_due(self, step: int) -> bool:
        return self.loss is not None and super().should_validate(step)

    def _images_due(self, step: int) -> bool:
        return self.images is not None and (step == 1 or step % self.job_config.validation.image_freq == 0)

    def should_validate(self, step: int) -> bool:
        return self._loss_due(step) or self._images_due(step)

    @contextlib.contextmanager
    def _forward_context(self) -> Iterator[None]:
        with self.validation_context(), self.maybe_enable_amp:
            yield

    @torch.no_grad()
    def validate(self, model_parts: list[nn.Module], step: int) -> None:
        model = model_parts[0]
        model.eval()
        try:
            if self._loss_due(step):
                self._validate_loss(model, step)
            if self._images_due(step):
                self._sample_images(model, step)
        finally:
            model.train()

    def _validate_loss(self, model: nn.Module, step: int) -> None:
        started = time.perf_counter()
        mesh = self.parallel_dims.get_mesh("batch") if self.parallel_dims.dp_enabled else None
        loss = self.loss(model, self.ae_params, self.device, self.loss_fn, self._forward_context, mesh)
        seconds = time.perf_counter() - started
        self.metrics_processor.log_validation(loss=loss, step=step, extra_metrics={"validation_metrics/loss_seconds": seconds})
        logger.info(f"validation: step {step}  loss {loss!r}  ({self.loss.num_samples} samples, {seconds:.2f} s)")

    def _sample_images(self, model: nn.Module, step: int) -> None:
        started = time.perf_counter()
        latents = self.images.sample(model, self.device, self._forward_context)
        if latents is None:
            return
        path, grid = self.images.write(latents, step)
        seconds = time.perf_counter() - started
        prompts = self.images.prompt_set.prompts
        self.metrics_processor.log_image(IMAGE_TAG, grid, step, caption=" | ".join(prompts))
        self.metrics_processor.logger.log({"validation_metrics/images_seconds": seconds}, step)
        logger.info(f"validation: step {step}  {len(prompts)} images -> {path} ({seconds:.2f} s)")


def check_held_out(root: Path, training_root: Path, training: Identity) -> Path:
    """``root`` if it is a validation set for ``training``: the same identity (interchangeable tensors),
    and no store named after an input tar the training dataset was made from."""
    identity = contract.read_identity(root)
    if identity != training:
        lines = "\n  ".join(identity.differences(training))
        raise ContractError(
            f"validation dataset {root} was not encoded like the training dataset {training_root} "
            f"(validation, training):\n  {lines}\nencode held-out tars with the same assets and config"
        )
    shared_stores = {p.name for p in contract.committed_store_paths(root)} & {
        p.name for p in contract.committed_store_paths(training_root)
    }
    if shared_stores:
        raise ContractError(
            f"validation dataset {root} holds stores of tars the training dataset was made from: "
            f"{sorted(shared_stores)[:5]}; validate on held-out tars"
        )
    return root


def build_precomputed_validator(
    job_config: JobConfig,
    dp_world_size: int,
    dp_rank: int,
    tokenizer: object,
    parallel_dims: ParallelDims,
    loss_fn: LossFunction,
    validation_context: ValidationContext,
    maybe_enable_amp: AbstractContextManager[None],
    metrics_processor: SampleMetricsProcessor,
    **pipeline_parallel: object,
) -> PrecomputedFluxValidator:
    """TorchTitan's ``build_validator_fn`` (no tokenizer; pipeline parallelism is refused at parallelize)."""
    del tokenizer, pipeline_parallel
    return PrecomputedFluxValidator(
        job_config, dp_rank, dp_world_size, parallel_dims, loss_fn, validation_context, maybe_enable_amp, metrics_processor
    )
