"""The prompt set Stage 2 draws sample images for: the T5/CLIP encodings ``stage1_encode.prompts`` stored
for each prompt and for the empty prompt, refused unless its text encoders are the training dataset's
(another T5 would condition the model on vectors it never saw — the pictures would look plausible
and mean nothing)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from shared import contract, pairing
from shared.contract import ContractError, Identity
from shared.store import StoreReader
from stage2_train.data.dataset import as_torch, load_empty_prompt


@dataclass
class PromptSet:
    prompts: list[str]
    t5: torch.Tensor
    """[n, L, D] float32"""
    clip: torch.Tensor
    """[n, D] float32"""
    empty: dict[str, torch.Tensor]
    """The empty prompt's ``t5`` [L, D] and ``clip`` [D], float32 (compact text: its ``t5_length`` too)."""
    t5_length: torch.Tensor | None = None
    """Compact text: [n] real T5 tokens of each prompt (the model masks the rest); exact: ``None``."""


def load_prompt_set(root: str | Path, training: Identity, count: int) -> PromptSet:
    """The first ``count`` prompts (-1: all) of the prompt set at ``root``, checked against ``training``."""
    root = Path(root)
    identity = contract.read_identity(root)
    differences = pairing.text_encoder_differences(identity, training)
    if differences:
        lines = "\n  ".join(differences)
        raise ContractError(
            f"prompt set {root} was encoded with other text encoders than the training dataset "
            f"(prompt set, dataset):\n  {lines}"
        )
    reader = StoreReader(root / contract.PROMPTS_STORE, identity, contract.prompt_specs(identity))
    rows = [reader.read(i) for i in range(len(reader) if count == -1 else min(count, len(reader)))]

    def stacked(name: str) -> torch.Tensor:
        return torch.stack([as_torch(name, row[name], identity.storage_dtype) for row in rows])

    empty = {name: t if name == contract.T5_LENGTH else t.float() for name, t in load_empty_prompt(root, identity).items()}
    t5_length = stacked(contract.T5_LENGTH) if identity.compact_text else None
    prompts = [str(row["prompt"]) for row in rows]
    return PromptSet(prompts, stacked(contract.T5).float(), stacked(contract.CLIP).float(), empty, t5_length)
