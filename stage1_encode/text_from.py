"""Stage 1 ``--text-from TEXT``: encode the images only, at another resolution, and take the text from TEXT.

T5-XXL is four fifths of Stage 1's GPU time and ~95 % of its bytes, and its output does not depend on the
image size, so a run at 512 px next to a 256 px dataset loads only the AE. Its identity takes the text
fields and text encoder hashes from TEXT (``shared.pairing``); each store pairs with TEXT's store of the
same tar, sample by key: a sample whose key TEXT does not hold (TEXT skipped it) is skipped and counted.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared import contract
from shared.ae import autoencoder_params, load_autoencoder
from shared.pairing import PairingError, TextDataset
from stage1_encode import asset_loading
from stage1_encode.encode import Encoders
from stage1_encode.errors import Stage1Error
from stage1_encode.prepare import Prepared
from stage1_encode.skips import Skip, SkipReason
from stage1_encode.sources import TarSource


def open_text_dataset(text_from: Path, tars: list[TarSource], storage_dtype: str, text_mode: str | None) -> TextDataset:
    """TEXT, checked before anything loads: a text dataset, stored as we store and in this config's text
    mode, holding every tar's store."""
    try:
        text = TextDataset.open(text_from)
    except (OSError, contract.ContractError) as exc:
        raise Stage1Error(f"--text-from {text_from}: {exc}") from exc
    if text.identity.storage_dtype != storage_dtype:
        raise Stage1Error(
            f"--text-from {text_from} stores {text.identity.storage_dtype}, this config {storage_dtype}; "
            f"set --storage.dtype {text.identity.storage_dtype}"
        )
    if text.identity.text_mode != text_mode:
        mode = text.identity.text_mode or "exact"
        raise Stage1Error(
            f"--text-from {text_from} holds {mode} text, this config {text_mode or 'exact'}; set --text.mode {mode}"
        )
    missing = [t.name for t in tars if not text.store_path(contract.store_name(t.name)).is_dir()]
    if missing:
        raise Stage1Error(
            f"--text-from {text_from} has no committed store for {len(missing)} of this task's tars "
            f"({', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}); encode them there first"
        )
    return text


def load_image_encoder(assets: str | os.PathLike, device: torch.device, dtype: torch.dtype) -> Encoders:
    """The AE encoder alone: T5 and CLIP are neither loaded nor hashed (their hashes come from TEXT)."""
    ae = load_autoencoder(assets, device, dtype)
    return Encoders(
        t5=None,
        clip=None,
        ae_encoder=ae.encoder,
        ae_params=dataclasses.asdict(autoencoder_params(assets)),
        hashes={"ae": asset_loading.asset_hashes(assets)["ae"]},
        device=device,
        dtype=dtype,
    )


@dataclass
class TextRows:
    """The text store of the tar being encoded: key -> row, and what the image store records of it."""

    rows: dict[str, int]
    record: dict[str, str]

    @classmethod
    def of(cls, text: TextDataset, tar_name: str) -> "TextRows":
        name = contract.store_name(tar_name)
        try:
            return cls(text.key_rows(name), text.record(name))
        except (OSError, PairingError) as exc:
            raise Stage1Error(f"text dataset {text.root}: store {name} is unreadable or gone: {exc}") from exc

    def split(self, results: list[Prepared | Skip]) -> list[Prepared | Skip]:
        """Prepared samples whose key the text store lacks become ``NOT_IN_TEXT_DATASET`` skips."""
        return [
            Skip(r.key, SkipReason.NOT_IN_TEXT_DATASET) if isinstance(r, Prepared) and r.key not in self.rows else r
            for r in results
        ]

    def indices(self, samples: list[Prepared]) -> np.ndarray:
        return np.array([self.rows[s.key] for s in samples], dtype=np.int64)
