"""TorchTitan's Flux trainer without encoders: every input comes from a Stage 1 dataset.

``FluxTrainer.__init__`` always loads T5, CLIP and the AE, so ``PrecomputedFluxTrainer`` runs
``Trainer.__init__`` and then does what ``FluxTrainer.__init__`` does minus the encoders. Its
``train_step`` is TorchTitan's ``Trainer.train_step`` (FluxTrainer's minus its refusal of gradient
accumulation: the same clipping, optimizer step and loss logging; see ``accumulation.py``); the
forward/backward differs: inputs are built from stored moments and encodings (``step.py``) instead
of running the encoders. Validation is Stage 2's own validator (``validator.py``), which TorchTitan's
train loop calls. At every step boundary the ranks also agree whether to stop for a time limit or
preemption (``stop_request.py``).
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Iterator

import torch
from torchtitan.config import JobConfig
from torchtitan.distributed import ParallelDims
from torchtitan.distributed import utils as dist_utils
from torchtitan.models.flux.train import FluxTrainer
from torchtitan.tools.logging import logger
from torchtitan.train import Trainer

from stage2_train.data.dataset import load_empty_prompt
from stage2_train.data.ledger import SampleLedger
from stage2_train.infra.accumulation import MicroBatchCounter, check_global_batch
from stage2_train.infra.liveness import Liveness, rank_log
from stage2_train.infra.stop_request import StopRequest, checkpoint_now, wait_for_pending_save
from stage2_train.monitor import log_filter
from stage2_train.refusals import Refusal, job_refusals
from stage2_train.step import flow_matching_batch, step_generator


class PrecomputedFluxTrainer(FluxTrainer):
    def __init__(self, job_config: JobConfig) -> None:
        rank = int(os.environ.get("RANK", "0"))
        log_filter.keep_full_log(rank_log(job_config.job.dump_folder, rank))
        refusals = job_refusals(job_config)  # before anything is built (every rank refuses alike)
        if refusals:
            raise Refusal("; ".join(refusals))
        Trainer.__init__(self, job_config)  # not FluxTrainer.__init__: it would load the encoders
        # As FluxTrainer: distinct seeds across data-parallel ranks.
        dist_utils.set_determinism(
            self.parallel_dims, self.device, job_config.debug, distinct_seed_mesh_dims=["fsdp", "dp_replicate"]
        )
        if self.parallel_dims.dp_enabled:
            # Our parallelize_fn wraps replicas in FSDP2 too, which then does the mixed precision;
            # TorchTitan would add autocast on top when the shard degree is 1.
            self.maybe_enable_amp = contextlib.nullcontext()
        if job_config.validation.enable:
            self.validator.bind(self.device, self.maybe_enable_amp)
        dataset = self.dataloader.dataset
        self.empty_prompt = {
            name: tensor.to(self.device) for name, tensor in load_empty_prompt(dataset.root, dataset.identity).items()
        }
        self.ledger = (
            SampleLedger(os.path.join(job_config.job.dump_folder, "ledger"), rank)
            if job_config.stage2.sample_ledger
            else None
        )
        self.stop_request = StopRequest(job_config.stage2.stop_file)
        self.liveness = Liveness(
            job_config.job.dump_folder,
            torch.distributed.get_rank(),
            job_config.stage2.liveness_interval_seconds,
            job_config.comm.train_timeout_seconds,
        )
        self.resumed_at: int | None = None
        self.micro_batches = MicroBatchCounter()

    def init_distributed(self) -> ParallelDims:
        """TorchTitan's, then a global batch it cannot split into micro-batches is refused in one line."""
        parallel_dims = super().init_distributed()
        check_global_batch(self.job_config, parallel_dims)
        return parallel_dims

    def train_step(self, data_iterator: Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]) -> None:
        """TorchTitan's step with gradient accumulation (``accumulation.py``)."""
        Trainer.train_step(self, data_iterator)

    def should_continue_training(self) -> bool:
        """TorchTitan's check at every step boundary, plus a stop all ranks agree on (see stop_request)."""
        if self.resumed_at is None:
            self.resumed_at = self.step  # the step the loaded checkpoint holds (0: none)
        self.liveness.at_step(self.step)
        if self.step == self.resumed_at + 1 and self.resumed_at > 0:
            # TorchTitan shortens the collectives' timeout only after step 1: a resumed start would
            # otherwise wait [comm] init_timeout_seconds for a hung rank.
            dist_utils.set_pg_timeouts(timedelta(seconds=self.job_config.comm.train_timeout_seconds), self.parallel_dims)
        if not super().should_continue_training():
            return False
        reason = self.stop_request.agreed_reason()
        if reason is None:
            return True
        if self.step == self.resumed_at == 0:
            logger.info(f"stopping at step 0: {reason}; no step trained, no checkpoint to save")
        elif not self.job_config.checkpoint.enable:
            logger.warning(f"stopping at step {self.step}: {reason}; checkpointing is off, a rerun starts over")
        else:
            if self.step == self.resumed_at or self.step % self.job_config.checkpoint.interval == 0:
                wait_for_pending_save(self.checkpointer)  # this step's interval save may still be writing
            else:
                checkpoint_now(self.checkpointer, self.step)
            logger.info(f"stopping at step {self.step}: {reason}; checkpoint step-{self.step} saved, "
                        f"a resumed run starts at step {self.step + 1}")
        self.stop_request.acknowledge(self.step, self.resumed_at)
        return False

    def forward_backward_step(
        self,
        *,
        input_dict: dict[str, torch.Tensor],
        labels: torch.Tensor,
        global_valid_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """FluxTrainer's step from stored encodings on one micro-batch; ``labels`` are its sample indices,
        ``global_valid_tokens`` the samples of the whole global batch (all micro-batches, all ranks; ``None``:
        this micro-batch is the step)."""
        config = self.job_config
        inputs = {name: tensor.to(self.device, non_blocking=True) for name, tensor in input_dict.items()}
        micro_batch = self.micro_batches.index(self.step)
        generator = step_generator(config.stage2.seed, self.step, self.dataloader.dp_rank, self.device, micro_batch)
        batch = flow_matching_batch(
            inputs,
            self.empty_prompt,
            self.model_args.autoencoder_params,
            config.training.classifier_free_guidance_prob,
            generator,
        )

        # Loss = squared error summed over this micro-batch's latents / latents of the whole global batch.
        if global_valid_tokens is not None:
            global_latents = global_valid_tokens * batch.target.shape[1:].numel()  # samples x latents per sample
        else:
            local_latents = torch.tensor(batch.target.numel(), dtype=torch.float32, device=self.device)
            if self.parallel_dims.dp_enabled:
                global_latents = dist_utils.dist_sum(local_latents, self.parallel_dims.get_mesh("batch"))
            else:
                global_latents = local_latents

        with self.train_context():
            with self.maybe_enable_amp:
                prediction = self.model_parts[0](**batch.model_inputs())
                loss = self.loss_fn(prediction, batch.target) / global_latents
            del prediction, batch
            loss.backward()

        if self.ledger is not None:
            self.ledger.record(self.step, labels, loss, micro_batch)
        return loss
