"""The resolution ladder's half of the contract: an image dataset and the text dataset it reads from.

T5 and CLIP do not depend on the image size, so a dataset at another resolution is encoded with
``--text-from TEXT``: its stores hold the image arrays and ``text_index`` (the row of the same-named text
store holding the sample's ``t5``/``clip``, matched by key). Pairing is per store and per sample, never by
a dataset-wide image shape, so stores or samples of other sizes (aspect buckets) can pair the same way.

What ties the two together, and how each tie is checked:

* ``Identity.text_dataset``: the text dataset's identity digest (what it *is*);
* ``dataset.json`` keys ``text_dataset_relpath`` and ``text_dataset_path`` (where it *was*): tried
  relative to the image dataset first, so moving both together keeps them paired; then the absolute
  path; then ``<dir>/<name>`` for each directory of ``$FLUX_TEXT_DATASETS`` (a search path);
* ``StoreAttrs.text_store``: per image store, the text store's name and key checksum at write time,
  compared with the text store's current one on every open (cheap: one small file per store);
* ``text_index``: re-read against the text store's keys by ``inspect_shards --verify`` (deep).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from shared import contract
from shared.contract import ContractError, Identity, StoreAttrs

RELPATH_KEY = "text_dataset_relpath"
PATH_KEY = "text_dataset_path"
SEARCH_PATH_ENV = "FLUX_TEXT_DATASETS"
"""Colon-separated directories searched for the text dataset (by its directory name) when neither
recorded path holds it: for a text dataset moved on its own."""


class PairingError(ContractError):
    """The text dataset of an image dataset is missing, another one, or no longer matches a store."""


def location_record(image_dataset: str | os.PathLike, text_dataset: str | os.PathLike) -> dict[str, str]:
    """``dataset.json`` keys beside an image dataset's identity that say where its text dataset is."""
    image, text = Path(image_dataset).resolve(), Path(text_dataset).resolve()
    return {RELPATH_KEY: os.path.relpath(text, image), PATH_KEY: str(text)}


def paired_text_fields(text_identity: Identity) -> dict[str, Any]:
    """The ``Identity`` fields an image dataset takes from its text dataset (its text is that one's)."""
    if not text_identity.stores_text:
        raise PairingError("the text dataset is itself an image dataset (made with --text-from); pair with its text dataset")
    return {field: getattr(text_identity, field) for field in contract.TEXT_FIELDS} | {"text_dataset": text_identity.digest()}


def text_encoder_hashes(text_identity: Identity) -> dict[str, dict[str, str]]:
    return {k: v for k, v in text_identity.encoders.items() if k in contract.TEXT_ENCODERS}


def candidates(image_dataset: str | os.PathLike, record: dict[str, Any]) -> list[Path]:
    """Where the text dataset may be, in the order tried."""
    found = []
    if record.get(RELPATH_KEY):
        found.append(Path(image_dataset) / record[RELPATH_KEY])
    if record.get(PATH_KEY):
        found.append(Path(record[PATH_KEY]))
        found += [Path(d) / Path(record[PATH_KEY]).name for d in os.environ.get(SEARCH_PATH_ENV, "").split(":") if d]
    return found


def locate_text_dataset(image_dataset: str | os.PathLike) -> Path:
    """The text dataset of ``image_dataset``: the first candidate whose identity digest is the recorded one."""
    record = contract.read_dataset_json(image_dataset)
    want = Identity.from_dict(record["identity"]).text_dataset
    if want is None:
        raise PairingError(f"{image_dataset} stores its own text; it has no text dataset")
    tried = []
    for path in candidates(image_dataset, record):
        if not (path / contract.DATASET_FILE).is_file():
            tried.append(f"{path} (missing)")
            continue
        have = contract.read_identity(path).digest()
        if have == want:
            return path.resolve()
        tried.append(f"{path} (identity {have}, rewritten?)")
    raise PairingError(
        f"text dataset {want} of {image_dataset} not found: tried {'; '.join(tried) or 'nothing recorded'}; "
        f"move it back, or add its parent directory to ${SEARCH_PATH_ENV}"
    )


@dataclass(frozen=True)
class TextDataset:
    """An opened text dataset: its stores' keys and key checksums, by store name."""

    root: Path
    identity: Identity

    @classmethod
    def open(cls, root: str | os.PathLike) -> "TextDataset":
        identity = contract.read_identity(root)
        if not identity.stores_text:
            raise PairingError(f"{root} holds no text encodings (it was made with --text-from); use its text dataset")
        return cls(Path(root).resolve(), identity)

    @classmethod
    def of(cls, image_dataset: str | os.PathLike) -> "TextDataset":
        return cls.open(locate_text_dataset(image_dataset))

    def store_path(self, name: str) -> Path:
        return contract.shards_dir(self.root) / name

    def attrs(self, name: str) -> StoreAttrs:
        path = self.store_path(name)
        if not path.is_dir():
            raise PairingError(f"text dataset {self.root} has no committed store {name}")
        return contract.read_store_attrs(path)

    def record(self, name: str) -> dict[str, str]:
        """What an image store records of its text store (``StoreAttrs.text_store``)."""
        return {"name": name, "key_checksum": self.attrs(name).checksums[contract.KEY]}

    def key_rows(self, name: str) -> dict[str, int]:
        """Sample key -> row of the text store ``name``."""
        keys = zarr.open_group(self.store_path(name), mode="r")[contract.KEY][:]
        return {str(k): i for i, k in enumerate(keys.tolist())}


def store_mismatch(attrs: StoreAttrs, text: TextDataset) -> str | None:
    """Why an image store no longer pairs with ``text`` (``None`` when it does); reads one small file."""
    name = attrs.text_store.get("name")
    if not name:
        return "records no text store"
    try:
        now = text.attrs(name).checksums.get(contract.KEY)
    except (OSError, ValueError, ContractError) as exc:
        return f"text store {name}: {exc}"
    if now != attrs.text_store.get("key_checksum"):
        return f"text store {name} was rewritten (key checksum {str(now)[:19]}… != recorded {attrs.text_store.get('key_checksum', '')[:19]}…)"
    return None


def check_stores(image_dataset: str | os.PathLike, text: TextDataset) -> None:
    """Every committed store of an image dataset still pairs with ``text``; else one line saying how many not."""
    problems = []
    stores = contract.committed_store_paths(image_dataset)
    for path in stores:
        problem = store_mismatch(contract.read_store_attrs(path), text)
        if problem:
            problems.append(f"{path.name}: {problem}")
    if problems:
        raise PairingError(
            f"{image_dataset}: {len(problems)} of {len(stores)} stores no longer pair with text dataset {text.root} "
            f"(first: {problems[0]}); re-encode them with --text-from"
        )


def keys_mismatch(image_keys: np.ndarray, text_index: np.ndarray, text_keys: np.ndarray) -> int:
    """How many samples' ``text_index`` does not point at a text row of the same key (deep check)."""
    text = [str(k) for k in text_keys.tolist()]
    return sum(
        not (0 <= row < len(text) and text[row] == str(key)) for key, row in zip(image_keys.tolist(), text_index.tolist())
    )


def text_encoder_differences(identity: Identity, other: Identity) -> list[str]:
    """Why text encodings made under ``identity`` do not belong with ``other``'s (empty: they do).

    Compared: encoder and tokenizer files, T5 length, widths and the tokenizer policy. Not compared:
    image fields, storage dtype and the encoders' compute dtype, which a prompt set (conditioning
    for sample images, never trained on) may be made with on another kind of node.
    """
    mine, theirs = dataclasses.asdict(identity), dataclasses.asdict(other)  # text_mode too where to_dict omits it
    differences = [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in contract.TEXT_FIELDS if mine[k] != theirs[k]]
    differences += [
        f"encoders.{k}: {identity.encoders.get(k)!r} != {other.encoders.get(k)!r}"
        for k in contract.TEXT_ENCODERS
        if identity.encoders.get(k) != other.encoders.get(k)
    ]
    if identity.preprocessing.get("tokenizers") != other.preprocessing.get("tokenizers"):
        differences.append(
            f"preprocessing.tokenizers: {identity.preprocessing.get('tokenizers')!r} "
            f"!= {other.preprocessing.get('tokenizers')!r}"
        )
    return differences
