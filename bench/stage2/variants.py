"""The variants the Stage 2 benchmark compares, as the command-line overrides each trainer takes."""

from __future__ import annotations

import dataclasses

AC_OVERRIDES = {
    "none": ("--activation_checkpoint.mode", "none"),
    "full": ("--activation_checkpoint.mode", "full"),
    "every-other": ("--activation_checkpoint.mode", "selective", "--activation_checkpoint.selective_ac_option", "2"),
}


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    trainer: str  # "online" (TorchTitan's FluxTrainer, encoders in the loop) | "ours" (stage2_train)
    ac: str  # a key of AC_OVERRIDES
    compile_blocks: bool = True
    float8: bool = False
    micro_batches: int = 1
    """Forward/backward micro-batches of the run's batch per optimizer step (gradient accumulation)."""
    text: str = "exact"
    """"compact": trains on a compact-text dataset (T5 cut per batch, padded keys masked; ``--mean-t5-tokens``)."""
    description: str = ""

    @property
    def online(self) -> bool:
        return self.trainer == "online"

    def overrides(self, batch: int) -> tuple[str, ...]:
        """The trainer's overrides for this variant at local (micro-)batch ``batch`` on one GPU."""
        compile_flag = "--compile.enable" if self.compile_blocks else "--compile.no-enable"
        converters = ("--model.converters", "float8") if self.float8 else ()
        accumulation = ("--training.global_batch_size", str(self.micro_batches * batch)) if self.micro_batches > 1 else ()
        return (*AC_OVERRIDES[self.ac], compile_flag, *converters, *accumulation)


VARIANTS = {
    v.name: v
    for v in (
        Variant("online", "online", "full", compile_blocks=False,
                description="TorchTitan's Flux trainer: T5-XXL/CLIP-L/AE (bf16) every step, its WebDataset loader, eager, full AC"),
        Variant("online_compiled", "online", "full", description="the same with each transformer block compiled"),
        Variant("bf16", "ours", "none", description="stage2_train, blocks compiled, no AC, bf16 autocast"),
        Variant("fp8", "ours", "none", float8=True,
                description="stage2_train, blocks compiled, no AC, float8 block linears (torchao tensorwise)"),
        Variant("bf16_accum4", "ours", "none", micro_batches=4,
                description="stage2_train, blocks compiled, no AC, bf16, 4 micro-batches per optimizer step"),
        Variant("bf16_accum8", "ours", "none", micro_batches=8,
                description="stage2_train, blocks compiled, no AC, bf16, 8 micro-batches per optimizer step"),
        Variant("bf16_compact", "ours", "none", text="compact",
                description="stage2_train, blocks compiled, no AC, bf16, compact text (T5 cut to 64-multiples, masked)"),
        Variant("bf16_ac", "ours", "full", description="stage2_train, blocks compiled, full AC"),
        Variant("bf16_eager", "ours", "none", compile_blocks=False,
                description="stage2_train, eager (no compile), no AC: what the planner's fake-tensor step models"),
        Variant("bf16_eo", "ours", "every-other", description="stage2_train, blocks compiled, AC on every other block"),
    )
}  # fmt: skip


def parse_variants(text: str) -> list[Variant]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    return [VARIANTS[name] for name in names]
