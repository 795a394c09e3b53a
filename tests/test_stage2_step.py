"""Stage 2 step math (latent sampling, draw order, prompt dropout), FLOP count and model wrapping."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torchtitan.config.job_config import ActivationCheckpoint, Compile
from torchtitan.models.flux import FluxModel, flux_args
from torchtitan.models.flux.model.autoencoder import AutoEncoder
from torchtitan.models.flux.utils import pack_latents

from stage2_train.infra.parallelize import apply_ac, apply_compile
from stage2_train.model.flavors import FLAVORS, LATENT_PATCH
from stage2_train.model.flops import flux_training_flops_per_sample, image_tokens
from stage2_train.step import drop_prompts, flow_matching_batch, sample_latents, step_seed

TINY = FLAVORS["flux-tiny"]


def test_latents_are_sampled_exactly_as_the_autoencoder_encodes():
    """Same moments, same seed: ``AutoEncoder.encode`` (global RNG) == ``sample_latents`` (generator)."""
    torch.manual_seed(0)
    ae = AutoEncoder(TINY.autoencoder_params).eval()
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        mean, logvar = ae.encoder(images).chunk(2, dim=1)
        torch.manual_seed(1234)
        online = ae.encode(images)
    ours = sample_latents(mean, logvar, TINY.autoencoder_params, torch.Generator().manual_seed(1234))
    assert torch.equal(online, ours)


def test_draws_come_in_the_online_order():
    """ε, noise, t from one generator equal the online step's randn_like, randn_like, rand after manual_seed."""
    ae = TINY.autoencoder_params
    gen = torch.Generator().manual_seed(7)
    inputs = {
        "t5": torch.randn(3, 256, 32, generator=gen),
        "clip": torch.randn(3, 32, generator=gen),
        "ae_mean": torch.randn(3, 16, 32, 32, generator=gen),
        "ae_logvar": torch.randn(3, 16, 32, 32, generator=gen) - 4,
    }
    empty = {"t5": torch.zeros(256, 32), "clip": torch.zeros(32)}
    batch = flow_matching_batch(inputs, empty, ae, 0.0, torch.Generator().manual_seed(step_seed(0, 5, 1)))

    torch.manual_seed(step_seed(0, 5, 1))
    mean, logvar = inputs["ae_mean"], inputs["ae_logvar"]
    x0 = ae.scale_factor * (mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) - ae.shift_factor)
    noise = torch.randn_like(x0)
    timesteps = torch.rand((3,))
    sigmas = timesteps.view(-1, 1, 1, 1)
    assert torch.equal(batch.timesteps, timesteps)
    assert torch.equal(batch.img, pack_latents((1 - sigmas) * x0 + sigmas * noise))
    assert torch.equal(batch.target, pack_latents(noise - x0))
    assert torch.equal(batch.txt, inputs["t5"]) and torch.equal(batch.y, inputs["clip"])
    assert batch.img.shape == (3, 256, 64) and batch.img_ids.shape == (3, 256, 3)
    assert batch.img_ids[0, 17].tolist() == [0, 1, 1] and not batch.txt_ids.any()


def test_prompt_dropout_replaces_t5_and_clip_independently():
    n = 4000
    t5, clip = torch.ones(n, 2, 3), torch.ones(n, 3)
    empty = {"t5": torch.zeros(2, 3), "clip": torch.zeros(3)}

    def dropped(prob: float) -> tuple[torch.Tensor, torch.Tensor]:
        new_t5, new_clip, mask = drop_prompts(t5, clip, empty, prob, torch.Generator().manual_seed(0))
        assert mask is None
        return (new_t5.sum((1, 2)) == 0), (new_clip.sum(1) == 0)

    none_t5, none_clip = dropped(0.0)
    assert not none_t5.any() and not none_clip.any()
    all_t5, all_clip = dropped(1.0)
    assert all_t5.all() and all_clip.all()
    drop_t5, drop_clip = dropped(0.447)
    assert abs(drop_t5.float().mean() - 0.447) < 0.03 and abs(drop_clip.float().mean() - 0.447) < 0.03
    assert abs((drop_t5 & drop_clip).float().mean() - 0.447**2) < 0.03  # independent: ≈ 20 % unconditional


def test_step_seeds_differ_by_step_and_rank_and_repeat():
    seeds = {step_seed(0, step, rank) for step in range(100) for rank in range(8)}
    assert len(seeds) == 800 and step_seed(0, 3, 1) == step_seed(0, 3, 1) != step_seed(1, 3, 1)
    assert all(0 <= s < 2**63 for s in seeds)


def test_flops_per_sample_match_torchtitans_formula():
    """FLUX.1-schnell at 256 px: 256 image + 256 text tokens, ≈ 20.2 TFLOP per training sample."""
    schnell = flux_args["flux-schnell"]
    assert image_tokens(256, schnell.autoencoder_params, LATENT_PATCH) == 256
    with torch.device("meta"):
        nparams = sum(p.numel() for p in FluxModel(schnell).parameters())
    assert nparams == 11_891_178_560
    assert flux_training_flops_per_sample(schnell, nparams, 512) == pytest.approx(20.2e12, rel=0.005)

    with torch.device("meta"):
        model = FluxModel(FLAVORS["flux-schnell-8x16"])
    params, flops = FLAVORS["flux-schnell-8x16"].get_nparams_and_flops(model, seq_len=2048)
    assert params == pytest.approx(5.0e9, rel=0.01) and flops == pytest.approx(8.6e12, rel=0.005)


def _tiny_model(depth: int = 2, single: int = 3) -> FluxModel:
    torch.manual_seed(0)
    model = FluxModel(dataclasses.replace(TINY, depth=depth, depth_single_blocks=single))
    model.init_weights()
    return model


def _forward_backward(model: FluxModel) -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "img": torch.randn(2, 16, 64, generator=gen),
        "img_ids": torch.zeros(2, 16, 3),
        "txt": torch.randn(2, 8, 32, generator=gen),
        "txt_ids": torch.zeros(2, 8, 3),
        "timesteps": torch.rand(2, generator=gen),
        "y": torch.randn(2, 32, generator=gen),
    }
    out = model(**inputs)
    out.square().sum().backward()
    return out.detach(), [p.grad for p in model.parameters()]


@pytest.mark.parametrize(
    ("mode", "option", "wrapped"),
    [("none", "2", []), ("full", "2", [0, 1, 2, 3, 4]), ("selective", "2", [1, 3]), ("selective", "3", [2])],
)
def test_activation_checkpointing_every_nth_block_keeps_the_math(mode, option, wrapped):
    reference = _forward_backward(_tiny_model())
    model = _tiny_model()
    apply_ac(model, ActivationCheckpoint(mode=mode, selective_ac_option=option))
    blocks = [*model.double_blocks, *model.single_blocks]
    assert [i for i, b in enumerate(blocks) if isinstance(b, CheckpointWrapper)] == wrapped
    out, grads = _forward_backward(model)
    assert torch.equal(out, reference[0]) and all(torch.allclose(a, b) for a, b in zip(grads, reference[1]))


@pytest.mark.parametrize("option", ["op", "0"])
def test_activation_checkpointing_modes_not_offered_are_refused(option):
    with pytest.raises(ValueError, match="every n-th block"):
        apply_ac(_tiny_model(), ActivationCheckpoint(mode="selective", selective_ac_option=option))


def test_each_block_compiles_whole_and_keeps_the_math():
    """fullgraph=True, with and without an AC wrapper: a graph break in a Flux block fails here, not on the GPU."""
    reference = _forward_backward(_tiny_model(1, 1))
    model = _tiny_model(1, 1)
    apply_ac(model, ActivationCheckpoint(mode="selective", selective_ac_option="2"))
    apply_compile(model, Compile(enable=True, backend="aot_eager"))
    assert all(hasattr(b, "_orig_mod") for b in [*model.double_blocks, *model.single_blocks])
    out, grads = _forward_backward(model)
    assert torch.allclose(out, reference[0], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, reference[1]))
