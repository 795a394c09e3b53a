"""Captions -> token ids, padded/truncated exactly as TorchTitan's FluxTokenizer (CLIP 77, T5 max length).

The tokenizers themselves come from ``stage1_encode.asset_loading.load_tokenizers``; this module decides which
caption bytes are usable and turns a batch of captions into numpy ids (cheap to send between processes).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from shared import contract
from stage1_encode.skips import SkipReason

TokenizerFactory = Callable[[], tuple[Any, Any]]
"""Builds ``(t5_tokenizer, clip_tokenizer)``; picklable, so each worker process builds its own."""


def caption_text(data: bytes | None) -> str | SkipReason:
    """The caption as TorchTitan's loader reads it (strict UTF-8, unstripped), or why it is skipped."""
    if data is None:
        return SkipReason.MISSING_CAPTION
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return SkipReason.CAPTION_NOT_UTF8
    if not any(ch.isprintable() and not ch.isspace() for ch in text):  # whitespace, control characters
        return SkipReason.EMPTY_CAPTION
    return text


def tokenize(tokenizers: tuple[Any, Any], captions: Sequence[str], t5_max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(t5 [n, t5_max_length], clip [n, 77])`` int64 token ids."""
    t5_tok, clip_tok = tokenizers
    t5 = t5_tok.encode(list(captions)).numpy().astype(np.int64, copy=False)
    clip = clip_tok.encode(list(captions)).numpy().astype(np.int64, copy=False)
    expected = ((len(captions), t5_max_length), (len(captions), contract.CLIP_TOKENS))
    if (t5.shape, clip.shape) != expected:
        raise RuntimeError(f"tokenizers returned {t5.shape} and {clip.shape}, expected {expected}")
    return t5, clip
