"""Compact text batches: each batch's T5 trimmed to one of a few fixed lengths, with its real-token mask.

On a compact dataset (``Identity.text_mode``) a sample's ``t5`` rows from ``t5_length`` on are zero and
carry nothing; ``collate`` cuts the batch's ``t5`` to the smallest multiple of ``[stage2] text_bucket``
(at most ``t5_max_length``) that holds its longest caption — and the empty prompt, which prompt dropout
may put in any row — and adds ``t5_mask`` [B, L] (True: a real token), which the masked model
(``model.masked_attention``) applies to the text keys. Few distinct lengths keep per-block compiled
graphs few. Trimming reorders nothing: batches are what the sampler made them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shared import contract

TEXT_MASK = "t5_mask"
"""The batch key of the text mask [B, L] (bool); absent in the exact mode."""


def text_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """[B, length] bool: position < each sample's ``t5_length``."""
    return torch.arange(length, device=lengths.device) < lengths[:, None]


@dataclass(frozen=True)
class TextTrim:
    """How a compact batch's ``t5`` is cut: to a multiple of ``bucket``, never below ``min_length``."""

    bucket: int = 64
    min_length: int = 1
    """The empty prompt's ``t5_length`` during training (prompt dropout substitutes it)."""

    def __post_init__(self) -> None:
        if self.bucket < 1:
            raise ValueError(f"stage2.text_bucket must be at least 1, got {self.bucket}")

    def length(self, longest: int, max_length: int) -> int:
        needed = max(longest, self.min_length)
        return min(max_length, -(-needed // self.bucket) * self.bucket)

    def __call__(self, t5: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """``t5`` [B, max_length, D] and ``t5_length`` [B] -> trimmed ``t5`` and ``t5_mask``."""
        length = self.length(int(lengths.max()), t5.shape[1])
        return {contract.T5: t5[:, :length].contiguous(), TEXT_MASK: text_mask(lengths, length)}
