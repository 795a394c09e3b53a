"""``[model] converters = ["float8"]``: parsed, the Flux filter picks the block linears, and a run
where FP8 cannot run (this CPU) stops with one line saying why instead of training in another precision."""

from __future__ import annotations

import torch
from test_stage2_helpers import PRODUCTION_CONFIG, parse_job_config, run_stage2, write_tiny_dataset
from torchtitan.models.flux import FluxModel

from stage2_train.model.flavors import FLAVORS
from stage2_train.model.float8 import is_float8_block_linear

TOKENWISE_BLOCK_LINEARS = {
    "double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "double_blocks.0.img_mlp.0", "double_blocks.0.img_mlp.2",
    "double_blocks.0.txt_attn.qkv", "double_blocks.0.txt_attn.proj", "double_blocks.0.txt_mlp.0", "double_blocks.0.txt_mlp.2",
    "single_blocks.0.linear1", "single_blocks.0.linear2",
}  # fmt: skip


def _converted(filter_fqns: list[str]) -> set[str]:
    with torch.device("meta"):
        model = FluxModel(FLAVORS["flux-tiny"])
    return {fqn for fqn, module in model.named_modules() if is_float8_block_linear(module, fqn, filter_fqns)}


def test_production_config_turns_float8_on_from_the_command_line():
    config = parse_job_config("--model.converters", "float8", config_file=PRODUCTION_CONFIG)
    assert config.model.converters == ["float8"]
    assert config.quantize.linear.float8.enable_fsdp_float8_all_gather
    assert config.quantize.linear.float8.precompute_float8_dynamic_scale_for_fsdp
    assert parse_job_config(config_file=PRODUCTION_CONFIG).model.converters == []


def test_only_tokenwise_block_linears_are_converted():
    assert _converted([]) == TOKENWISE_BLOCK_LINEARS  # no modulation, embedder or final-layer linear
    assert _converted(["linear2", "img_mlp"]) == TOKENWISE_BLOCK_LINEARS - {
        "single_blocks.0.linear2", "double_blocks.0.img_mlp.0", "double_blocks.0.img_mlp.2"
    }  # fmt: skip


def test_float8_without_an_fp8_gpu_is_refused_before_training(tmp_path):
    dataset = write_tiny_dataset(tmp_path / "ds", stores=1, samples_per_store=4)
    result = run_stage2(1, dataset, tmp_path / "out", "--model.converters", "float8", "--training.steps", "2")
    assert result.returncode != 0
    refusal = (
        "float8 training needs an NVIDIA GPU of compute capability >= 8.9, but this process has no CUDA GPU: "
        'remove "float8" from [model] converters to train in bf16'
    )
    assert refusal in result.stderr
    assert "step:" not in result.stdout + result.stderr  # no step ran, in FP8 or otherwise
