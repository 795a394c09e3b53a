"""The text half of an image dataset (Stage 1 ``--text-from``): where it is, what it holds, whether it still
pairs. The summary reads attributes only; ``verify`` also re-reads every ``text_index`` against the text
store's keys (``shared.pairing``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import zarr

from shared import contract, pairing
from shared.contract import ContractError, Identity
from shared.pairing import TextDataset
from shared.progress import Finding

TEXT_DATASET = "text dataset"
"""Where findings about the pairing as a whole are reported."""


@dataclass
class TextHalf:
    """What ``inspect_shards`` shows of the text dataset; ``problem`` is one line, or ``None`` when paired."""

    path: str | None
    identity_digest: str
    stores: int
    samples: int
    stored_bytes: int
    problem: str | None


def text_half(dataset: str | os.PathLike, identity: Identity) -> TextHalf | None:
    """``None`` for a dataset that stores its own text."""
    if identity.stores_text:
        return None
    try:
        text = TextDataset.of(dataset)
    except (OSError, ValueError, ContractError) as exc:
        return TextHalf(None, str(identity.text_dataset), 0, 0, 0, str(exc))
    attrs = [contract.read_store_attrs(p) for p in contract.committed_store_paths(text.root)]
    try:
        pairing.check_stores(dataset, text)
        problem = None
    except ContractError as exc:
        problem = str(exc)
    return TextHalf(
        str(text.root), text.identity.digest(), len(attrs), sum(a.num_samples for a in attrs),
        sum(a.stored_bytes for a in attrs), problem,
    )


def pairing_findings(dataset: str | os.PathLike) -> list[Finding]:
    """The text dataset found and unchanged, and every sample's ``text_index`` at a text row of its key."""
    try:
        text = TextDataset.of(dataset)
        pairing.check_stores(dataset, text)
    except (OSError, ValueError, ContractError) as exc:
        return [Finding(TEXT_DATASET, str(exc))]
    findings = []
    for path in contract.committed_store_paths(dataset):
        image = zarr.open_group(path, mode="r")
        text_keys = zarr.open_group(text.store_path(path.name), mode="r")[contract.KEY][:]
        wrong = pairing.keys_mismatch(image[contract.KEY][:], image[contract.TEXT_INDEX][:], text_keys)
        if wrong:
            findings.append(Finding(path.name, f"{wrong} samples' text_index points at another key of text store {path.name}"))
    return findings
