"""Validation loss and sample images in Stage 2, without the text encoders (CPU, tiny models).

In process: the loss is the training math at the stratified timesteps with fixed draws, and ranks'
shares add up to the whole; the sampler is TorchTitan's ``denoise``; a prompt set holds Stage 1's
encodings and only fits a dataset with its text encoders; a validation set must be held out.
With torchrun (2 processes, FSDP-sharded) on real Stage 1 datasets: loss and image grids are logged
(stdout, TensorBoard, wandb, PNG) and change as the model trains, and a run stopped at a checkpoint
and resumed logs the same validation loss and the same grid as an uninterrupted run.
"""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_stage2_helpers import REPO_ROOT, parse_job_config, run_stage2, tiny_identity, write_tiny_dataset
from torchtitan.components.loss import build_mse_loss
from torchtitan.models.flux import FluxModel
from torchtitan.models.flux.inference.sampling import denoise as torchtitan_denoise
from torchtitan.models.flux.utils import create_position_encoding_for_latents, pack_latents

from fixtures import write_sample_tars
from shared import contract
from shared.contract import ContractError
from shared.latent_grid import grid_size
from shared.store import StoreReader
from stage1_encode import prompts as prompt_cli
from stage1_encode.config import load_config
from stage1_encode.pipeline import Task, run_task
from stage2_train.data.dataset import PrecomputedDataset, load_empty_prompt
from stage2_train.data.loader import open_dataset
from stage2_train.model.flavors import FLAVORS
from stage2_train.step import mixed_seed
from stage2_train.validation.loss import DRAW_STREAM, STRATIFIED_TIMESTEPS, ValidationLoss, rank_batches
from stage2_train.validation.prompt_set import load_prompt_set
from stage2_train.validation.sampling import denoise
from stage2_train.validation.validator import IMAGE_TAG, check_held_out

pytest_plugins = ["fixtures_assets"]

TINY = FLAVORS["flux-tiny"]
PROMPTS = ["a lighthouse at dusk", "a red fox in the snow"]
SHARD_2 = ("--parallelism.data_parallel_replicate_degree", "1", "--parallelism.data_parallel_shard_degree", "2")


def _tiny_model() -> FluxModel:
    torch.manual_seed(0)
    model = FluxModel(TINY)
    model.init_weights()
    with torch.no_grad():  # the output layer starts at zero; make predictions depend on the inputs
        for param in model.final_layer.parameters():
            param.normal_(std=0.05)
    return model.eval()


# --------------------------------------------------------------------------- validation loss


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("validation") / "ds", stores=2, samples_per_store=12)


def _validation_loss(root: Path, rank: int, world: int, *overrides: str) -> float:
    config = parse_job_config("--training.dataset_path", str(root), "--validation.local_batch_size", "5", *overrides)
    dataset = PrecomputedDataset(*open_dataset(config), "fail")
    return ValidationLoss(dataset, config, rank, world)(_tiny_model(), TINY.autoencoder_params, torch.device("cpu"), build_mse_loss(config))


@pytest.mark.parametrize("all_timesteps", [False, True])
def test_validation_loss_is_the_training_math_at_stratified_timesteps(synthetic, all_timesteps):
    """Squared error of every (sample, stratified timestep) / latent count, with ε and noise from the
    documented seeds and no prompt dropout — computed here one item at a time."""
    flag = ("--validation.all_timesteps",) if all_timesteps else ()
    loss = _validation_loss(synthetic, 0, 1, *flag)
    assert loss == _validation_loss(synthetic, 0, 1, *flag), "two calls must agree exactly"

    dataset = PrecomputedDataset(synthetic, contract.read_identity(synthetic), "fail")
    model, ae = _tiny_model(), TINY.autoencoder_params
    squared_error, count = 0.0, 0
    with torch.no_grad():
        for index in range(len(dataset)):
            x = {name: t.float() for name, t in dataset[index].items() if name != "index"}
            for k in range(8) if all_timesteps else [index % 8]:
                generator = torch.Generator().manual_seed(mixed_seed(0, DRAW_STREAM, index, k))
                eps = torch.randn(x["ae_mean"].shape, generator=generator)
                noise = torch.randn(x["ae_mean"].shape, generator=generator)
                x0 = ae.scale_factor * (x["ae_mean"] + torch.exp(0.5 * x["ae_logvar"]) * eps - ae.shift_factor)
                t = STRATIFIED_TIMESTEPS[k]
                prediction = model(
                    img=pack_latents(((1 - t) * x0 + t * noise)[None]),
                    img_ids=create_position_encoding_for_latents(1, *x0.shape[1:], 3),
                    txt=x["t5"][None],
                    txt_ids=torch.zeros(1, x["t5"].shape[0], 3),
                    y=x["clip"][None],
                    timesteps=torch.tensor([t]),
                )
                target = pack_latents((noise - x0)[None])
                squared_error += ((prediction - target) ** 2).sum().item()
                count += target.numel()
    assert loss == pytest.approx(squared_error / count, rel=1e-5)


def test_ranks_take_equal_disjoint_shares_that_add_up_to_the_whole(synthetic):
    shares = [sum(rank_batches(24, 5, -1, rank, 2), []) for rank in range(2)]
    assert shares == [list(range(12)), list(range(12, 24))]
    assert [len(b) for b in rank_batches(24, 5, -1, 1, 2)] == [5, 5, 2]
    assert sum(rank_batches(24, 5, 1, 0, 2), []) == list(range(5)), "steps = 1: one global batch"
    assert sum(rank_batches(25, 5, -1, 2, 3), []) == list(range(16, 24)), "the split drops the tail < world"
    halves = [_validation_loss(synthetic, rank, 2) for rank in range(2)]
    assert sum(halves) / 2 == pytest.approx(_validation_loss(synthetic, 0, 1), rel=1e-6)


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("guidance", [None, 5.0])
def test_denoise_is_torchtitans_given_the_same_noise(guidance):
    model, gen = _tiny_model(), torch.Generator().manual_seed(1)
    t5, clip = torch.randn(2, 256, 32, generator=gen), torch.randn(2, 32, generator=gen)
    empty = (torch.randn(2, 256, 32, generator=gen), torch.randn(2, 32, generator=gen))
    torch.manual_seed(7)
    ours = denoise(model, torch.randn(2, 16, 32, 32), t5, clip, 4, empty if guidance else None, guidance or 1.0)
    torch.manual_seed(7)  # TorchTitan draws the same noise from the global RNG
    theirs = torchtitan_denoise(
        device=torch.device("cpu"),
        dtype=torch.float32,
        model=model,
        img_width=256,
        img_height=256,
        denoising_steps=4,
        clip_encodings=clip,
        t5_encodings=t5,
        enable_classifier_free_guidance=guidance is not None,
        empty_t5_encodings=empty[0],
        empty_clip_encodings=empty[1],
        classifier_free_guidance_scale=guidance,
    )
    assert torch.equal(ours, theirs)


# --------------------------------------------------------------------------- Stage 1 datasets and prompt set


@pytest.fixture(scope="module")
def stage1(tiny_assets, tmp_path_factory) -> SimpleNamespace:
    """Training dataset (2 tars), validation dataset (a third, held-out tar: the normal Stage 1 command
    on other tars) and a prompt set whose first prompt is a training caption."""
    root = tmp_path_factory.mktemp("stage1")
    tars = write_sample_tars(root / "tars", shards=3, per_shard=16, seed=0)
    (root / "held-out").mkdir()
    tars[2].rename(root / "held-out" / tars[2].name)
    config = load_config(REPO_ROOT / "configs" / "encode_tiny.toml")
    run_task(config, Task(str(root / "tars"), root / "train", tiny_assets), out=io.StringIO())
    run_task(config, Task(str(root / "held-out"), root / "val", tiny_assets), out=io.StringIO())
    identity = contract.read_identity(root / "train")
    first = contract.committed_store_paths(root / "train")[0]  # sample 0 of the training dataset is its sample 0
    caption = str(StoreReader(first, identity, contract.array_specs(identity)).read(0, ("caption",))["caption"])
    (root / "prompts.txt").write_text("\n".join([caption, "", *PROMPTS]) + "\n")
    assert prompt_cli.main(_prompt_args(root, tiny_assets)) == 0
    return SimpleNamespace(root=root, train=root / "train", val=root / "val", prompts=root / "prompts", caption=caption)


def _prompt_args(root: Path, assets: Path, prompts_file: str = "prompts.txt") -> list[str]:
    return [
        *("--prompts", str(root / prompts_file), "--output", str(root / "prompts"), "--assets", str(assets)),
        *("--config", str(REPO_ROOT / "configs" / "encode_tiny.toml")),
    ]


def test_prompt_set_holds_stage1s_encodings_and_is_written_once(stage1, tiny_assets, capsys):
    identity = contract.read_identity(stage1.train)
    prompt_set = load_prompt_set(stage1.prompts, identity, -1)
    assert prompt_set.prompts == [stage1.caption, *PROMPTS]
    stored = PrecomputedDataset(stage1.train, identity, "fail")[0]
    torch.testing.assert_close(prompt_set.t5[0], stored["t5"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(prompt_set.clip[0], stored["clip"], rtol=1e-4, atol=1e-5)
    for name, tensor in load_empty_prompt(stage1.train, identity).items():
        assert torch.equal(prompt_set.empty[name], tensor)
    assert load_prompt_set(stage1.prompts, identity, 2).prompts == [stage1.caption, PROMPTS[0]]

    capsys.readouterr()
    assert prompt_cli.main(_prompt_args(stage1.root, tiny_assets)) == 0
    assert "already holds these prompts" in capsys.readouterr().out
    (stage1.root / "other.txt").write_text("another prompt\n")
    assert prompt_cli.main(_prompt_args(stage1.root, tiny_assets, "other.txt")) == 1
    assert "already holds 3 other prompts" in capsys.readouterr().err


def test_companion_datasets_must_fit_the_training_dataset(stage1, synthetic):
    training = contract.read_identity(stage1.train)
    with pytest.raises(ContractError, match=r"other text encoders(.|\n)*encoders\.t5:"):
        load_prompt_set(stage1.prompts, tiny_identity(), -1)
    with pytest.raises(ContractError, match="was not encoded like the training dataset"):
        check_held_out(synthetic, stage1.train, training)
    with pytest.raises(ContractError, match=r"holds stores of tars the training dataset was made from: \['cc12m-train-0000"):
        check_held_out(stage1.train, stage1.train, training)
    assert check_held_out(stage1.val, stage1.train, training) == stage1.val


# --------------------------------------------------------------------------- during training (torchrun)


def _train(stage1: SimpleNamespace, dump: Path, steps: int, *overrides: str) -> subprocess.CompletedProcess:
    result = run_stage2(
        2, stage1.train, dump, *SHARD_2,
        *("--training.steps", str(steps), "--validation.enable", "--validation.local_batch_size", "4"),
        *("--validation.dataset_path", str(stage1.val), "--validation.prompts_path", str(stage1.prompts)),
        *("--validation.freq", "5", "--validation.image_freq", "5"),
        *overrides,
    )  # fmt: skip
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-8000:]}"
    return result


def _validation_losses(result: subprocess.CompletedProcess) -> dict[int, str]:
    """Step -> the loss as logged (full precision); both ranks must log the same."""
    found: dict[int, set[str]] = {}
    for step, loss in re.findall(r"validation: step (\d+)  loss (\S+)", result.stdout + result.stderr):
        found.setdefault(int(step), set()).add(loss)
    assert all(len(losses) == 1 for losses in found.values()), found
    return {step: losses.pop() for step, losses in found.items()}


@pytest.fixture(scope="module")
def uninterrupted(stage1, tmp_path_factory) -> tuple[Path, dict[int, str]]:
    dump = tmp_path_factory.mktemp("uninterrupted")
    return dump, _validation_losses(_train(stage1, dump, 10, "--metrics.enable_wandb"))


def test_validation_loss_is_logged_and_falls(uninterrupted):
    dump, losses = uninterrupted
    assert sorted(losses) == [1, 5, 10]
    assert float(losses[10]) < float(losses[1]), losses
    events = EventAccumulator(str(next(dump.glob("tb/*"))), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("validation_metrics/loss")}
    assert logged == pytest.approx({step: float(loss) for step, loss in losses.items()}, rel=1e-6)
    assert {"validation_metrics/loss_seconds", "validation_metrics/images_seconds"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Images(IMAGE_TAG)] == [1, 5, 10]
    assert len(list(dump.glob("tb/*/wandb/offline-run-*/files/media/images/**/*.png"))) == 3, "wandb images"


def test_image_grids_are_written_and_change_as_the_model_trains(uninterrupted):
    dump, _ = uninterrupted
    grids = {step: dump / "samples" / f"step-{step:06d}.png" for step in (1, 5, 10)}
    assert sorted(p.name for p in (dump / "samples").iterdir()) == [p.name for p in grids.values()]
    pixels = {step: np.asarray(Image.open(path).convert("RGB")) for step, path in grids.items()}
    assert all(Image.open(path).size == grid_size(3, 256) for path in grids.values())
    assert not np.array_equal(pixels[1], pixels[10])


def test_resumed_run_logs_the_same_validation_as_an_uninterrupted_one(stage1, uninterrupted, tmp_path):
    """Stop at step 6 (a checkpoint), rerun to step 10: the validation at step 10 equals the uninterrupted
    run's — the same loss to the last digit and the same grid, byte for byte."""
    dump, losses = uninterrupted
    stopped = tmp_path / "stopped"
    checkpointed = ("--checkpoint.enable", "--checkpoint.interval", "3")
    _train(stage1, stopped, 6, *checkpointed)
    resumed = _train(stage1, stopped, 10, *checkpointed)
    assert "Training starts at step 7" in resumed.stdout + resumed.stderr
    assert _validation_losses(resumed) == {10: losses[10]}
    assert (stopped / "samples" / "step-000010.png").read_bytes() == (dump / "samples" / "step-000010.png").read_bytes()
