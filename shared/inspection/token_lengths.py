"""T5 tokens per caption, in either text mode: what compact text keeps of the stored rows, or would keep.

A compact dataset stores each caption's count (``t5_length``). An exact dataset's stored captions are
tokenized with its own T5 tokenizer (``dataset.json``'s ``assets_dir``) and counted by
``shared.tokens.real_lengths``, the rule compact Stage 1 stores, so a user sees the saving before
choosing the mode. Either way at most ``cap`` samples, spread evenly over the dataset, are counted.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from shared import contract, tokens
from shared.ae import AssetsError
from shared.contract import Identity
from shared.inspection.samples import Location, spread
from shared.progress import read_committed

TOKENIZE_BATCH = 1024


@dataclass
class TokenLengths:
    source: str
    """``t5_length`` (stored, compact) or ``tokenized captions`` (exact)."""
    samples: int
    of_samples: int
    max_length: int
    mean: float
    p50: float
    p99: float
    max: int
    truncated: int
    """Captions at ``max_length`` tokens: cut there (or exactly that long)."""

    @property
    def real_fraction(self) -> float:
        """The share of the stored ``t5`` rows that are real tokens: what compact text keeps."""
        return self.mean / self.max_length


def token_lengths(dataset: str | os.PathLike, identity: Identity, cap: int) -> TokenLengths | str:
    """The distribution over up to ``cap`` samples, or one line saying why there is none."""
    if not identity.stores_text:
        return "T5 tokens per caption: this dataset's text is its text dataset's; inspect that one with --tokens"
    locations = spread(dataset, cap)
    if not locations:
        return "T5 tokens per caption: no committed store yet"
    if identity.compact_text:
        lengths, source = _read(locations, contract.T5_LENGTH).astype(np.int64), "t5_length"
    else:
        counted = _tokenized(dataset, identity, [str(c) for c in _read(locations, contract.CAPTION)])
        if isinstance(counted, str):
            return counted
        lengths, source = counted, "tokenized captions"
    committed, _ = read_committed(dataset, identity.digest())
    return TokenLengths(
        source=source,
        samples=len(lengths),
        of_samples=sum(a.num_samples for a in committed.values()),
        max_length=identity.t5_max_length,
        mean=float(lengths.mean()),
        p50=float(np.percentile(lengths, 50)),
        p99=float(np.percentile(lengths, 99)),
        max=int(lengths.max()),
        truncated=int((lengths >= identity.t5_max_length).sum()),
    )


def _read(locations: list[Location], name: str) -> np.ndarray:
    """``name`` of each location, one read per store (only the chunks holding the samples)."""
    by_store: dict[Path, list[int]] = defaultdict(list)
    for path, index in locations:
        by_store[path].append(index)
    parts = [zarr.open_group(path, mode="r")[name].oindex[np.array(rows)] for path, rows in by_store.items()]
    return np.concatenate(parts)


def _tokenized(dataset: str | os.PathLike, identity: Identity, captions: list[str]) -> np.ndarray | str:
    assets = contract.read_dataset_json(dataset).get(contract.ASSETS_DIR_KEY)
    folder = Path(str(assets)) / tokens.T5_TOKENIZER_DIR
    if not assets or not folder.is_dir():
        return f"T5 tokens per caption: no T5 tokenizer at {folder} (dataset.json's {contract.ASSETS_DIR_KEY}); not counted"
    try:
        tokenizer = tokens.load_t5_tokenizer(assets, identity.t5_max_length)
    except (OSError, ValueError, AssetsError) as exc:
        return f"T5 tokens per caption: the tokenizer at {folder} does not load ({exc}); not counted"
    counts = [
        tokens.real_lengths(tokenizer.encode(captions[i : i + TOKENIZE_BATCH]))
        for i in range(0, len(captions), TOKENIZE_BATCH)
    ]
    return torch.cat(counts).numpy().astype(np.int64)
