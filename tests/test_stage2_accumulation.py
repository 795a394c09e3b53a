"""Gradient accumulation in Stage 2 (``training.global_batch_size``): TorchTitan's ``Trainer.train_step``
with two micro-batches of 2 trains what one batch of the same 4 samples with the same draws trains;
each micro-batch draws its own numbers, the first those of a step without accumulation; a global batch
that is not a multiple of local batch x data-parallel degree is refused in one line. The resume with
accumulation is in tests/test_stage2_train.py."""

from __future__ import annotations

import contextlib
import copy
from types import SimpleNamespace

import pytest
import torch
from fidelity import fidelity_model
from test_stage2_helpers import parse_job_config, run_stage2, write_tiny_dataset
from torchtitan.components.loss import build_mse_loss
from torchtitan.components.lr_scheduler import build_lr_schedulers
from torchtitan.components.optimizer import build_optimizers
from torchtitan.distributed import ParallelDims
from torchtitan.distributed import utils as dist_utils

from preflight.system import Cluster
from preflight.table import FAIL, OK
from stage2_train.data.dataset import collate, load_empty_prompt
from stage2_train.data.ledger import SampleLedger, read_ledger
from stage2_train.data.loader import open_dataset, precomputed_dataset
from stage2_train.infra.accumulation import MicroBatchCounter
from stage2_train.model.flavors import FLAVORS
from stage2_train.preflight import data_parallel_degree, global_batch_row
from stage2_train.step import FlowMatchingBatch, flow_matching_batch, step_generator, step_seed
from stage2_train.trainer import PrecomputedFluxTrainer

STEP = 3
GRAD_TOLERANCE = 1e-6
"""Largest |Δgrad| over the largest |grad|, float32: the same products, summed in another order (two
backward passes added into .grad vs one over 4 samples; the matrix kernels block 2 and 4 rows
differently), so the last bits differ. Measured: 1.6e-7 (the loss: equal)."""


def _one_process() -> ParallelDims:
    return ParallelDims(dp_replicate=1, dp_shard=1, cp=1, tp=1, pp=1, ep=1, etp=1, world_size=1)


def _max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    scale = max(x.abs().max().item() for x in b)
    return max((x - y).abs().max().item() for x, y in zip(a, b)) / scale


def _optimizer(model: torch.nn.Module, config) -> tuple:
    optimizers = build_optimizers([model], config.optimizer, _one_process())
    return optimizers, build_lr_schedulers(optimizers, config.lr_scheduler, config.training.steps)


def _cat(batches: list[FlowMatchingBatch]) -> FlowMatchingBatch:
    fields = batches[0].__dataclass_fields__
    parts = {name: [getattr(b, name) for b in batches] for name in fields}
    return FlowMatchingBatch(**{name: None if values[0] is None else torch.cat(values) for name, values in parts.items()})


def test_two_micro_batches_train_what_one_batch_of_both_trains(one_rank_group, tmp_path):
    dataset_root = write_tiny_dataset(tmp_path / "ds", stores=1, samples_per_store=8)
    config = parse_job_config(
        *("--training.dataset_path", str(dataset_root), "--training.local_batch_size", "2"),
        *("--training.global_batch_size", "4", "--optimizer.lr", "1e-2", "--lr_scheduler.warmup_steps", "0"),
    )
    dataset = precomputed_dataset(*open_dataset(config), "fail")
    micro_batches = [collate([dataset[i] for i in indices]) for indices in ([5, 1], [6, 2])]
    empty_prompt = load_empty_prompt(dataset_root, dataset.identity)
    model = fidelity_model()
    ae = FLAVORS["flux-tiny"].autoencoder_params
    dropout = config.training.classifier_free_guidance_prob

    # Accumulated: Stage 2's trainer through TorchTitan's train_step, two micro-batches per optimizer step.
    ours = PrecomputedFluxTrainer.__new__(PrecomputedFluxTrainer)
    optimizers, schedulers = _optimizer(accumulated := copy.deepcopy(model), config)
    ours.__dict__.update(
        job_config=config, device=torch.device("cpu"), parallel_dims=_one_process(), step=STEP,
        train_context=dist_utils.get_train_context(False), maybe_enable_amp=contextlib.nullcontext(),
        loss_fn=build_mse_loss(config), model_parts=[accumulated], model_args=FLAVORS["flux-tiny"],
        empty_prompt=empty_prompt, dataloader=SimpleNamespace(dp_rank=0), micro_batches=MicroBatchCounter(),
        ledger=SampleLedger(tmp_path / "ledger", 0), gradient_accumulation_steps=2, optimizers=optimizers,
        lr_schedulers=schedulers, checkpointer=SimpleNamespace(maybe_wait_for_staging=lambda: None),
        metrics_processor=SimpleNamespace(should_log=lambda step: False),
    )  # fmt: skip
    ours.train_step(iter(copy.deepcopy(micro_batches)))
    our_grads = [p.grad.clone() for p in accumulated.parameters()]  # clipped in place: the norm is below max_norm

    # Reference: one batch of the same 4 samples with the same draws (each micro-batch's own generator).
    single = copy.deepcopy(model)
    draws = [
        flow_matching_batch(inputs, empty_prompt, ae, dropout, step_generator(config.stage2.seed, STEP, 0, torch.device("cpu"), m))
        for m, (inputs, _) in enumerate(micro_batches)
    ]  # fmt: skip
    batch = _cat(draws)
    loss = build_mse_loss(config)(single(**batch.model_inputs()), batch.target) / batch.target.numel()
    loss.backward()
    single_grads = [p.grad.clone() for p in single.parameters()]

    ledger = read_ledger(tmp_path / "ledger" / "rank_0.jsonl")[STEP]
    assert ledger["samples"] == [5, 1, 6, 2] and ledger["micro_batches"] == 2
    assert ledger["loss"] == pytest.approx(loss.item(), rel=GRAD_TOLERANCE)
    assert 0 < _max_rel(our_grads, single_grads) < GRAD_TOLERANCE  # not bit-equal: summed in another order
    print(f"accumulated vs single batch: gradients {_max_rel(our_grads, single_grads):.2e}, loss "
          f"{abs(ledger['loss'] - loss.item()) / loss.item():.2e} (relative)")
    # The optimizer stepped after both micro-batches (AdamW's first step, lr·sign(g) where |g| >> eps:
    # parameters are not compared, a gradient entry near 0 turns its last-bit difference into a full step).
    assert _max_rel(list(accumulated.parameters()), list(model.parameters())) > 1e-3


def test_each_micro_batch_draws_its_own_numbers_the_first_as_without_accumulation():
    seeds = {m: step_seed(0, STEP, 1, m) for m in range(4)}
    assert seeds[0] == step_seed(0, STEP, 1) and len(set(seeds.values())) == 4
    assert step_seed(0, STEP, 1, 2) == step_seed(0, STEP, 1, 2) and step_seed(0, STEP, 0, 1) != seeds[1]
    counter = MicroBatchCounter()
    assert [counter.index(step) for step in (1, 1, 1, 2, 2, 3)] == [0, 1, 2, 0, 1, 0]


def test_preflight_checks_the_global_batch_against_the_data_parallel_degree():
    def row(global_batch: int, shard: int = 2, gpus: int = 0):
        config = parse_job_config("--training.local_batch_size", "4", "--training.global_batch_size", str(global_batch))
        degrees = {"replicate": 2, "shard": shard, "tp": 1, "cp": 1, "pp": 1}
        cluster = Cluster(nodes=2, allocated_gpus=gpus or None, visible_gpus=gpus)
        result = global_batch_row(config, data_parallel_degree(degrees, cluster))
        assert result.check == "global batch"
        return result.status, result.detail

    assert row(32) == (OK, "32 = 2 micro-batch(es) x 4 data-parallel rank(s) x 4 per optimizer step")
    assert row(128, shard=-1, gpus=8) == (OK, "128 = 2 micro-batch(es) x 16 data-parallel rank(s) x 4 per optimizer step")
    assert row(24) == (
        FAIL, "training.global_batch_size 24 must be -1 (no gradient accumulation) or a positive multiple of "
        "training.local_batch_size 4 x 4 data-parallel rank(s) = 16: every optimizer step takes whole micro-batches "
        "on every rank",
    )  # fmt: skip
    assert row(0)[0] == FAIL


def test_trainer_refuses_a_global_batch_it_cannot_split_before_training(tmp_path):
    dataset = write_tiny_dataset(tmp_path / "ds", stores=1, samples_per_store=8)
    result = run_stage2(1, dataset, tmp_path / "out", "--training.global_batch_size", "6", "--training.steps", "1")
    assert result.returncode != 0
    assert (
        "stage2_train: error: training.global_batch_size 6 must be -1 (no gradient accumulation) or a positive multiple of "
        "training.local_batch_size 4 x 1 data-parallel rank(s) = 4" in result.stderr
    )
    assert "AssertionError" not in result.stderr and "step:" not in result.stdout + result.stderr
