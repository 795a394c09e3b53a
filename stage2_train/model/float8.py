"""FP8 training of the Flux blocks: ``[model] converters = ["float8"]`` (needs torchao, the ``fp8`` extra).

TorchTitan 0.2.2's ``quantize.linear.float8`` converter (torchao's ``Float8Linear``, dynamic tensorwise
scaling) converts every ``nn.Linear`` whose sides are multiples of 16. In Flux that includes the
modulation linears, which see one row per sample rather than per token, and the embedders and final
layer; there the casts to FP8 cost more than the faster matrix product saves. Stage 2's ``float8`` is
that converter with a Flux filter: only the token-wise linears of the double and single blocks
(attention qkv and proj, the MLPs, the single blocks' linear1/linear2). ``[quantize.linear.float8]``
keeps TorchTitan's meaning (``enable_fsdp_float8_all_gather`` and
``precompute_float8_dynamic_scale_for_fsdp`` when FSDP shards; ``filter_fqns`` excludes more).

FP8 runs on a GPU that has it or not at all: on a CPU, an older GPU, without torchao or with
emulation asked for, the converter stops the run with one line saying why, never falls back to bf16.
TorchTitan applies converters in ``Trainer.__init__``, before the ``parallelize_fn``, so the
per-block ``torch.compile`` compiles the FP8 casts with the blocks.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchtitan.components.quantization.float8 import Float8LinearConverter
from torchtitan.config import JobConfig
from torchtitan.distributed import ParallelDims
from torchtitan.protocols.model_converter import register_model_converter

CONVERTER_NAME = "float8"
FLOAT8_CAPABILITY = (8, 9)
"""FP8 tensor cores: Ada (8.9), Hopper (9.0) and later."""
BLOCK_LISTS = ("double_blocks.", "single_blocks.")
MODULATION = ("_mod.", "modulation.")
"""Double blocks' ``img_mod``/``txt_mod`` and single blocks' ``modulation``: one row per sample."""


def float8_device_problem() -> str | None:
    """Why this process cannot train in FP8, or ``None`` when its GPU can."""
    if not torch.cuda.is_available():
        return "this process has no CUDA GPU"
    capability = torch.cuda.get_device_capability()
    if capability < FLOAT8_CAPABILITY:
        name = torch.cuda.get_device_name()
        return f"{name} has compute capability {capability[0]}.{capability[1]}"
    return None


def is_float8_block_linear(module: nn.Module, fqn: str, filter_fqns: list[str]) -> bool:
    """Convert ``module`` (at ``fqn``)? Token-wise block linears with sides divisible by 16 only."""
    if not isinstance(module, nn.Linear) or not fqn.startswith(BLOCK_LISTS):
        return False
    if any(part in fqn for part in MODULATION) or any(part in fqn for part in filter_fqns):
        return False
    out_features, in_features = module.weight.shape
    return out_features % 16 == 0 and in_features % 16 == 0


class FluxFloat8Converter(Float8LinearConverter):
    """TorchTitan's float8 converter with the Flux filter and no fallback."""

    def __init__(self, job_config: JobConfig, parallel_dims: ParallelDims) -> None:
        _refuse_unless_runnable(job_config)
        super().__init__(job_config, parallel_dims)
        if not self.enabled:  # TorchTitan only warns (e.g. a torchao too old for recipe_name)
            raise ValueError("float8: TorchTitan could not configure torchao's Float8Linear (see the warning above)")
        self.filter_fn = partial(is_float8_block_linear, filter_fqns=list(job_config.quantize.linear.float8.filter_fqns))


def float8_problem(job_config: JobConfig) -> str | None:
    """Why FP8 training cannot run here, in one line with the fix, or ``None`` when it can."""
    hint = f'remove "{CONVERTER_NAME}" from [model] converters to train in bf16'
    problem = float8_device_problem()
    if problem is not None:
        return f"float8 training needs an NVIDIA GPU of compute capability >= 8.9, but {problem}: {hint}"
    if job_config.quantize.linear.float8.emulate:
        return f"float8 emulation is not offered (it is a test mode of TorchTitan's): {hint}"
    try:
        import torchao.float8  # noqa: F401
    except ImportError as exc:
        return f"float8 training needs torchao (pip install 'flux-encode-once[fp8]'): {exc}"
    return None


def _refuse_unless_runnable(job_config: JobConfig) -> None:
    """The trainer refused already (``refusals.float8_refusal``); this guards any other user of the converter."""
    problem = float8_problem(job_config)
    if problem:
        raise ValueError(problem)


register_model_converter(FluxFloat8Converter, CONVERTER_NAME)
