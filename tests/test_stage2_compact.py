"""Compact text in Stage 2 (issue #30): trimmed, masked batches train what full-length masked batches train.

CPU, float32, real TorchTitan: batches are cut to ``[stage2] text_bucket`` multiples with a T5 mask, the
trainer's step on them equals its step on the same samples at the full 256 positions with the same mask,
a caption of length L is seen through exactly L text keys, and a torchrun run trains, checkpoints and
resumes with the uninterrupted losses.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_stage2_helpers import parse_job_config, run_stage2, write_tiny_dataset
from torchtitan.components.loss import build_mse_loss
from torchtitan.config.job_config import ActivationCheckpoint, Compile
from torchtitan.distributed import ParallelDims
from torchtitan.distributed import utils as dist_utils

from shared import contract
from stage2_train.data.compact_text import TEXT_MASK, TextTrim
from stage2_train.data.dataset import collate, load_empty_prompt
from stage2_train.data.ledger import read_ledger
from stage2_train.data.loader import batch_collate, open_dataset, precomputed_dataset
from stage2_train.infra.accumulation import MicroBatchCounter
from stage2_train.infra.parallelize import apply_ac, apply_compile
from stage2_train.model.flavors import FLAVORS
from stage2_train.model.masked_attention import TextMaskedFluxModel
from stage2_train.step import drop_prompts
from stage2_train.trainer import PrecomputedFluxTrainer
from stage2_train.validation.loss import ValidationLoss
from stage2_train.validation.sampling import denoise

TINY = FLAVORS["flux-tiny"]
COMPACT = {"text_mode": contract.COMPACT_TEXT}
STEP = 3


def masked_model(depth: int = 1, single: int = 1) -> TextMaskedFluxModel:
    """flux-tiny with every weight nonzero (TorchTitan zeroes the output layer and the modulations)."""
    torch.manual_seed(0)
    model = TextMaskedFluxModel(dataclasses.replace(TINY, depth=depth, depth_single_blocks=single))
    model.init_weights()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param), alpha=0.05)
    return model


def _max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() / y.abs().max().item() for x, y in zip(a, b))


@pytest.fixture(scope="module")
def compact_root(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("compact") / "ds", stores=2, samples_per_store=8, **COMPACT)


def test_compact_batches_are_cut_to_a_bucket_with_the_real_tokens_masked(compact_root, tmp_path):
    config = parse_job_config("--training.dataset_path", str(compact_root))
    dataset = precomputed_dataset(*open_dataset(config), "fail")
    empty = load_empty_prompt(compact_root, dataset.identity)
    assert int(empty[contract.T5_LENGTH]) == 1 and not empty[contract.T5][1:].any()
    samples = [dataset[i] for i in range(16)]
    lengths = torch.stack([s[contract.T5_LENGTH] for s in samples])
    assert lengths.min() >= 1 and lengths.max() <= 256 and len(set(lengths.tolist())) > 4
    for sample in samples:  # zero past the caption, real rows before it
        assert not sample[contract.T5][sample[contract.T5_LENGTH] :].any() and sample[contract.T5][0].any()

    for batch in (samples[:4], samples[4:8], samples[8:12], samples[12:]):
        inputs, _ = batch_collate(compact_root, dataset.identity, 64)([*batch, None])
        longest = max(int(s[contract.T5_LENGTH]) for s in batch)
        assert inputs[contract.T5].shape[1] == min(256, -(-longest // 64) * 64)
        assert inputs[TEXT_MASK].sum(1).tolist() == [int(s[contract.T5_LENGTH]) for s in batch]
        for row, sample in enumerate(batch):
            assert torch.equal(inputs[contract.T5][row], sample[contract.T5][: inputs[contract.T5].shape[1]])
    assert TextTrim(64, min_length=70).length(3, 256) == 128 and TextTrim(64).length(200, 256) == 256

    exact_root = write_tiny_dataset(tmp_path / "exact", stores=1, samples_per_store=4)
    exact = precomputed_dataset(exact_root, contract.read_identity(exact_root), "fail")
    inputs, _ = batch_collate(exact_root, exact.identity, 64)([exact[i] for i in range(4)])
    assert set(inputs) == set(contract.TENSORS) and inputs[contract.T5].shape[1] == 256


def test_prompt_dropout_substitutes_the_empty_prompts_mask():
    t5, mask = torch.ones(64, 5, 3), torch.ones(64, 5, dtype=torch.bool)
    empty = {"t5": torch.zeros(8, 3), "clip": torch.zeros(3), "t5_length": torch.tensor(2)}
    new_t5, _, new_mask = drop_prompts(t5, torch.ones(64, 3), empty, 0.5, torch.Generator().manual_seed(0), mask)
    dropped = new_t5.sum((1, 2)) == 0
    assert 0 < dropped.sum() < 64
    assert (new_mask[dropped] == torch.tensor([True, True, False, False, False])).all() and new_mask[~dropped].all()


def _bare_trainer(config, model: torch.nn.Module, empty_prompt: dict) -> PrecomputedFluxTrainer:
    """The trainer's forward/backward on one process, without building a run."""
    trainer = PrecomputedFluxTrainer.__new__(PrecomputedFluxTrainer)
    trainer.__dict__.update(
        job_config=config, device=torch.device("cpu"), step=STEP, model_parts=[model], model_args=TINY,
        parallel_dims=ParallelDims(dp_replicate=1, dp_shard=1, cp=1, tp=1, pp=1, ep=1, etp=1, world_size=1),
        train_context=dist_utils.get_train_context(False), maybe_enable_amp=contextlib.nullcontext(),
        loss_fn=build_mse_loss(config), empty_prompt=empty_prompt, dataloader=SimpleNamespace(dp_rank=0),
        micro_batches=MicroBatchCounter(), ledger=None,
    )  # fmt: skip
    return trainer


def test_a_trimmed_step_equals_the_full_length_masked_step(compact_root):
    """(a) Same samples and draws (prompt dropout at 0.5 included): the step on batches cut to 64 / 128
    positions gives the loss and gradients of the step on all 256 zero-padded positions, same mask."""
    config = parse_job_config(
        "--training.dataset_path", str(compact_root), "--training.classifier_free_guidance_prob", "0.5"
    )
    dataset = precomputed_dataset(*open_dataset(config), "fail")
    empty = load_empty_prompt(compact_root, dataset.identity)
    samples = [dataset[i] for i in range(16)]
    model = masked_model()
    cut_lengths = set()
    for batch in (samples[:8], samples[8:]):
        trimmed, labels = collate(batch, TextTrim(64, int(empty[contract.T5_LENGTH])))
        full, _ = collate(batch, TextTrim(256))
        assert full[contract.T5].shape[1] == 256 and torch.equal(trimmed[TEXT_MASK], full[TEXT_MASK][:, : trimmed[contract.T5].shape[1]])
        cut_lengths.add(trimmed[contract.T5].shape[1])
        results = []
        for inputs in (trimmed, full):
            replica = copy.deepcopy(model)
            loss = _bare_trainer(config, replica, empty).forward_backward_step(input_dict=inputs, labels=labels)
            results.append((loss.detach(), [p.grad for p in replica.parameters()]))
        (trimmed_loss, trimmed_grads), (full_loss, full_grads) = results
        assert trimmed_loss.item() == pytest.approx(full_loss.item(), rel=1e-6)
        assert _max_rel(trimmed_grads, full_grads) < 1e-6
    assert max(cut_lengths) < 256


def _inputs(txt: torch.Tensor, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n, length = txt.shape[:2]
    return {
        "img": torch.randn(n, 16, 64, generator=gen),
        "img_ids": torch.randn(n, 16, 3, generator=gen),
        "txt": txt,
        "txt_ids": torch.zeros(n, length, 3),
        "timesteps": torch.rand(n, generator=gen),
        "y": torch.randn(n, 32, generator=gen),
    }


@pytest.mark.parametrize("length", [1, 37, 64, 200])
def test_a_caption_of_length_l_attends_to_exactly_l_text_tokens(length):
    """(b) Changing the text rows at and past L leaves the prediction unchanged; unmasked, they change it."""
    model = masked_model(depth=2, single=2).eval()
    gen = torch.Generator().manual_seed(length)
    txt = torch.randn(1, 256, 32, generator=gen)
    other = txt.clone()
    other[:, length:] = torch.randn(1, 256 - length, 32, generator=gen)
    mask = torch.arange(256)[None] < length
    with torch.no_grad():
        out = model(**_inputs(txt), txt_mask=mask)
        assert torch.equal(out, model(**_inputs(other), txt_mask=mask))
        assert torch.allclose(out, model(**_inputs(txt[:, :length]), txt_mask=mask[:, :length]), rtol=1e-5, atol=1e-6)
        everything = torch.ones_like(mask)
        assert not torch.allclose(model(**_inputs(txt), txt_mask=everything), model(**_inputs(other), txt_mask=everything))


def test_masked_blocks_compile_whole_and_checkpoint_with_a_new_mask_each_call():
    """Per-block ``torch.compile(fullgraph=True)`` over AC blocks, and eager AC (its recompute in backward
    reads the mask of its forward): the same outputs and gradients as eager, call after call, for masks
    and lengths that change between calls."""
    calls = [(torch.tensor([3, 8]), 8), (torch.tensor([5, 2]), 8), (torch.tensor([20, 64]), 64)]

    def run(model: torch.nn.Module) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        results = []
        for lengths, length in calls:
            model.zero_grad()
            txt = torch.randn(2, length, 32, generator=torch.Generator().manual_seed(length))
            out = model(**_inputs(txt), txt_mask=torch.arange(length)[None] < lengths[:, None])
            out.square().sum().backward()
            results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
        return results

    reference = run(masked_model(2, 2))
    for mode, compiled in (("full", False), ("selective", True)):
        model = masked_model(2, 2)
        apply_ac(model, ActivationCheckpoint(mode=mode, selective_ac_option="2"))
        if compiled:
            apply_compile(model, Compile(enable=True, backend="aot_eager"))
        for (out, grads), (want_out, want_grads) in zip(run(model), reference):
            assert torch.allclose(out, want_out, rtol=1e-5, atol=1e-6) and _max_rel(grads, want_grads) < 1e-5


def test_validation_loss_and_sampling_apply_the_masks(compact_root):
    """The held-out loss on trimmed batches is the loss on full-length masked ones; sampling with guidance
    ignores T5 rows past each prompt's (and the empty prompt's) length."""
    model = masked_model().eval()
    ae = TINY.autoencoder_params
    losses = []
    for bucket in ("64", "256"):
        config = parse_job_config("--training.dataset_path", str(compact_root), "--stage2.text_bucket", bucket)
        dataset = precomputed_dataset(*open_dataset(config), "fail")
        losses.append(ValidationLoss(dataset, config, 0, 1)(model, ae, torch.device("cpu"), build_mse_loss(config)))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)

    gen = torch.Generator().manual_seed(0)
    noise, t5, clip = torch.randn(2, 16, 32, 32, generator=gen), torch.randn(2, 256, 32, generator=gen), torch.randn(2, 32)
    empty = (torch.randn(2, 256, 32, generator=gen), torch.randn(2, 32, generator=gen))
    masks = (torch.arange(256)[None] < torch.tensor([[5], [40]]), torch.arange(256)[None].expand(2, -1) < 1)
    images = denoise(model, noise, t5, clip, 2, empty, 5.0, masks)
    t5[:, 40:], empty[0][:, 1:] = 7.0, -7.0
    assert torch.equal(images, denoise(model, noise, t5, clip, 2, empty, 5.0, masks))
    assert not torch.allclose(images, denoise(model, noise, t5, clip, 2, empty, 5.0, (torch.ones_like(masks[0]),) * 2))


CHECKPOINTED = ("--checkpoint.enable", "--checkpoint.interval", "4", "--stage2.sample_ledger")
SHARD_2 = ("--parallelism.data_parallel_replicate_degree", "1", "--parallelism.data_parallel_shard_degree", "2")


def _ok(result):
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-8000:]}"
    return result


def test_a_compact_run_trains_checkpoints_and_resumes_with_the_same_losses(compact_root, tmp_path):
    """(c) torchrun, FSDP over 2 ranks, every block checkpointed (AC recompute with the mask), 8 steps;
    a second run from the step-4 checkpoint trains steps 5-8 on the same samples to the same losses, and
    one process (batch 8) resumed from it trains each step's global batch (other draws: losses differ)."""
    common = ("--training.steps", "8", "--activation_checkpoint.mode", "full", *CHECKPOINTED)
    overrides = (*common, *SHARD_2)
    whole = tmp_path / "whole"
    result = _ok(run_stage2(2, compact_root, whole, *overrides))
    assert "compact text: T5 cut per batch to multiples of 64 up to 256 tokens" in result.stdout + result.stderr
    resumed = tmp_path / "resumed"
    shutil.copytree(whole / "checkpoint" / "step-4", resumed / "checkpoint" / "step-4")
    result = _ok(run_stage2(2, compact_root, resumed, *overrides))
    assert "Training starts at step 5" in result.stdout + result.stderr
    for rank in range(2):
        want, got = read_ledger(whole / "ledger" / f"rank_{rank}.jsonl"), read_ledger(resumed / "ledger" / f"rank_{rank}.jsonl")
        assert sorted(got) == [5, 6, 7, 8]
        for step in got:
            assert got[step]["samples"] == want[step]["samples"] and got[step]["loss"] == want[step]["loss"], step

    one = tmp_path / "one"
    shutil.copytree(whole / "checkpoint" / "step-4", one / "checkpoint" / "step-4")
    _ok(run_stage2(1, compact_root, one, "--training.local_batch_size", "8", *common))
    got = read_ledger(one / "ledger" / "rank_0.jsonl")
    ranks = [read_ledger(whole / "ledger" / f"rank_{rank}.jsonl") for rank in range(2)]
    assert {step: got[step]["samples"] for step in got} == {s: ranks[0][s]["samples"] + ranks[1][s]["samples"] for s in range(5, 9)}
