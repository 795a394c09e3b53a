"""Gradient accumulation: ``training.global_batch_size`` = k x local batch x data-parallel degree makes each
optimizer step run k forward/backward micro-batches, which amortises AdamW and gradient clipping.

TorchTitan's ``Trainer.train_step`` does the accumulation (FluxTrainer's refuses it): it takes the step's
k micro-batches, counts their samples over all ranks and calls ``forward_backward_step`` once per
micro-batch with that count, so the loss divides by the latents of the whole global batch and k
micro-batches of b give the gradient of one batch of k·b. What Stage 2 adds: a global batch that is
not such a multiple is refused in one line before anything is built (TorchTitan would assert later,
with a traceback per rank), and each micro-batch learns its index within the step, so that it draws
its own reproducible numbers (``step.step_seed``).
"""

from __future__ import annotations

from torchtitan.config import JobConfig
from torchtitan.distributed import ParallelDims

from stage2_train.refusals import Refusal


def global_batch_refusal(global_batch_size: int, local_batch_size: int, dp_degree: int) -> str | None:
    """Why ``global_batch_size`` cannot be trained with this local batch and data-parallel degree, or
    ``None`` when it can (negative: TorchTitan's default, one micro-batch per step)."""
    per_micro_batch = local_batch_size * dp_degree
    if global_batch_size < 0 or (global_batch_size > 0 and global_batch_size % per_micro_batch == 0):
        return None
    return (
        f"training.global_batch_size {global_batch_size} must be -1 (no gradient accumulation) or a positive "
        f"multiple of training.local_batch_size {local_batch_size} x {dp_degree} data-parallel rank(s) = "
        f"{per_micro_batch}: every optimizer step takes whole micro-batches on every rank"
    )


def check_global_batch(job_config: JobConfig, parallel_dims: ParallelDims) -> None:
    """Raise ``Refusal`` with ``global_batch_refusal``'s line (the trainer, once its degrees are known)."""
    dp_degree = parallel_dims.dp_replicate * parallel_dims.dp_shard if parallel_dims.dp_enabled else 1
    training = job_config.training
    refusal = global_batch_refusal(training.global_batch_size, training.local_batch_size, dp_degree)
    if refusal:
        raise Refusal(refusal)


class MicroBatchCounter:
    """Numbers the forward/backward passes of each optimizer step 0, 1, …: ``Trainer.train_step`` calls
    ``forward_backward_step`` once per micro-batch without saying which one it is."""

    def __init__(self) -> None:
        self._step = -1
        self._next = 0

    def index(self, step: int) -> int:
        """This pass's index within ``step`` (0 for the first pass of every step)."""
        if step != self._step:
            self._step, self._next = step, 0
        index, self._next = self._next, self._next + 1
        return index
