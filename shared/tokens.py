"""T5 token ids and a caption's count of real tokens, one rule for Stage 1 and inspect.

Compact text (``contract.COMPACT_TEXT``) runs T5 over each caption's real tokens and stores their count
as ``t5_length``; ``inspect_shards --tokens`` counts the same way from stored captions, so what it
reports for an exact dataset is exactly what a compact encode of it would keep.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from shared.ae import AssetsError

T5_TOKENIZER_DIR = "tokenizer_2"
"""The T5 tokenizer's folder in an assets directory (FLUX.1-schnell's layout)."""

T5_PAD_ID = 0
"""T5's SentencePiece vocabulary: pad 0, EOS 1, unk 2 (``load_t5_tokenizer`` checks it)."""


class FixedLengthTokenizer:
    """Pads and truncates to a fixed length exactly as TorchTitan's ``FluxTokenizer.encode`` does."""

    def __init__(self, hf_tokenizer, max_length: int):
        self.hf_tokenizer = hf_tokenizer
        self.max_length = max_length

    def encode(self, texts: list[str]) -> torch.Tensor:
        """``texts`` -> LongTensor [len(texts), max_length]."""
        return self.hf_tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            return_length=False,
            return_overflowing_tokens=False,
            padding="max_length",
            return_tensors="pt",
        )["input_ids"]


def load_t5_tokenizer(assets_dir: str | os.PathLike, max_length: int) -> FixedLengthTokenizer:
    """The assets' T5 tokenizer as FluxTokenizer builds it; refuses one whose pad id is not ``T5_PAD_ID``
    (compact text finds a caption's end by it)."""
    from transformers import T5Tokenizer

    hf = T5Tokenizer.from_pretrained(str(Path(assets_dir) / T5_TOKENIZER_DIR), max_length=max_length, local_files_only=True)
    if hf.pad_token_id != T5_PAD_ID:
        raise AssetsError(f"{assets_dir}: the T5 tokenizer's pad id is {hf.pad_token_id}, not T5's {T5_PAD_ID}")
    return FixedLengthTokenizer(hf, max_length)


def real_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """Right-padded ids [B, L] -> int32 [B]: positions up to the last non-pad token (EOS included, so at
    least 1 for any tokenized caption; L when truncated). Runs where ``tokens`` are, without a sync."""
    positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)
    return ((tokens != T5_PAD_ID) * positions).amax(dim=1).to(torch.int32)
