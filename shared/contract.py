"""The stage contract: the on-disk format Stage 1 writes and Stage 2 and ``inspect_shards`` read.

A reader of this module knows the whole format; nothing else in the project names an array, an
attribute or a path of a dataset.

A *dataset* is a directory::

    <dataset>/
      dataset.json                 identity of everything that shapes the tensors (see ``Identity``)
      empty_prompt.zarr/           T5 and CLIP encodings of the empty caption (one sample)
      shards/<input-tar-stem>.zarr one Zarr v3 store per input tar, complete by definition
      shards/.<stem>.zarr.tmp-*    a store being written (or left by a killed task)
      progress/task-<i>.json       heartbeat of Stage 1 array task i (see ``shared.heartbeat``)

A *prompt set* (Stage 1's ``prompts`` command) holds text encodings only, for Stage 2 to sample
images from while it trains without the text encoders::

    <prompt-set>/
      dataset.json                 identity and assets directory, as a dataset's (image fields unused)
      empty_prompt.zarr/           the empty caption's encodings (the unconditional half of CFG)
      prompts.zarr/                ``t5``, ``clip`` and ``prompt`` of each prompt, in file order

It fits a dataset whose text encoders, tokenizers and T5 length are its own
(``shared.pairing.text_encoder_differences``).

An *image dataset* (Stage 1 ``--text-from TEXT``, the resolution ladder) has the same layout but no
``empty_prompt.zarr`` and no ``t5``/``clip`` arrays: each store holds the image arrays plus
``text_index``, the row of the same-named store of the text dataset that holds the sample's text
encodings (same key). ``Identity.text_dataset`` is the text dataset's identity digest; where to find it
is recorded beside the identity (``shared.pairing``), and each store records the text store's key
checksum (``StoreAttrs.text_store``), so a text dataset deleted or rewritten underneath is detected.

Each store holds arrays whose first axis is the sample (``array_specs``). Tensors are stored as
``uint16`` views of bfloat16 (zarr has no bfloat16) or as float32 (exact tests), chunk = 1 sample,
grouped into Zarr shards of ``samples_per_shard`` samples so a parallel filesystem sees few large
files. Every chunk carries a CRC32C, so a flipped byte fails the read of that sample instead of
training on garbage. The store's root attributes record its sample count, skips by reason and a
SHA-256 per array; a store appears under its final name only after it was verified (atomic rename).

*Compact text* (opt-in, ``Identity.text_mode``): masked T5 over real tokens only; ``t5`` rows from
``t5_length`` on are zero (compressed away; a sample stays one chunk), and Stage 2 masks them out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.atomic import TMP_INFIX, final_name_of_temporary, fsync_dir, fsync_file, is_temporary, temporary_name  # noqa: F401

SCHEMA_VERSION = 1
"""Bump when the layout or the meaning of an array changes; readers refuse other versions."""

DATASET_FILE = "dataset.json"
EMPTY_PROMPT_STORE = "empty_prompt.zarr"
PROMPTS_STORE = "prompts.zarr"
SHARDS_DIR = "shards"
PROGRESS_DIR = "progress"
STORE_SUFFIX = ".zarr"
ASSETS_DIR_KEY = "assets_dir"
"""``dataset.json`` key, beside the identity: the assets directory Stage 1 encoded with (where
``inspect_shards --grid`` finds the AE weights named in ``Identity.encoders["ae"]``)."""

CLIP_TOKENS = 77
"""CLIP's context length; TorchTitan pads and truncates CLIP captions to it."""

STORAGE_DTYPES = ("bfloat16", "float32")

# Array names: the only place they are spelled (``array_specs`` says what each holds).
T5, CLIP, AE_MEAN, AE_LOGVAR = "t5", "clip", "ae_mean", "ae_logvar"
KEY, CAPTION, ORIGINAL_SIZE, CROP_BOX = "key", "caption", "original_size", "crop_box"
PROMPT, TEXT_INDEX, T5_LENGTH = "prompt", "text_index", "t5_length"
TENSORS = (T5, CLIP, AE_MEAN, AE_LOGVAR)
"""The per-sample tensors, which are all a training step reads of a sample."""
IMAGE_TENSORS = (AE_MEAN, AE_LOGVAR)
COMPACT_TEXT = "compact"
TEXT_MODES = (COMPACT_TEXT,)  # ``Identity.text_mode``; the exact mode has none


class ContractError(RuntimeError):
    """A dataset or store does not satisfy the contract (wrong version, identity, shape, checksum)."""


@dataclass(frozen=True)
class Identity:
    """Everything that shapes the stored tensors; two datasets with equal identities are interchangeable.

    Stage 1 refuses to add stores to a dataset with another identity; Stage 2 refuses a dataset whose
    identity disagrees with its model config.
    """

    t5_max_length: int
    t5_dim: int
    clip_dim: int
    image_size: int
    ae_params: dict[str, Any]
    """TorchTitan ``AutoEncoderParams`` as a dict (architecture, scale and shift factors)."""
    storage_dtype: str
    encoders: dict[str, dict[str, str]]
    """Per encoder (``t5``, ``clip``, ``ae``, ``t5_tokenizer``, ``clip_tokenizer``): file name -> SHA-256."""
    preprocessing: dict[str, Any]
    """Image policy: min side, crop policy, resampling, palette handling, JPEG draft mode."""
    code_version: str
    schema_version: int = SCHEMA_VERSION
    text_dataset: str | None = None
    """Identity digest of the text dataset an image dataset pairs with; ``None``: the text is stored here.
    Text fields above (T5 length, widths, text encoders) are that dataset's."""
    text_mode: str | None = None
    """``"compact"``: masked T5, ``t5_length`` stored; ``None``: exact (left out of the dict and digest)."""

    def __post_init__(self) -> None:
        # JSON has no tuples: normalise so an identity equals itself after a round trip.
        object.__setattr__(self, "ae_params", json.loads(json.dumps(self.ae_params)))
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ContractError(f"storage_dtype must be one of {STORAGE_DTYPES}, got {self.storage_dtype!r}")
        if self.text_mode is not None and self.text_mode not in TEXT_MODES:
            raise ContractError(f"text_mode must be one of {TEXT_MODES} or absent (exact), got {self.text_mode!r}")
        if self.image_size % self.latent_downsample:
            raise ContractError("image_size must be a multiple of the AE's downsampling factor")

    @property
    def latent_channels(self) -> int:
        return int(self.ae_params["z_channels"])

    @property
    def latent_downsample(self) -> int:
        return 2 ** (len(self.ae_params["ch_mult"]) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.latent_downsample

    @property
    def ae_scale_factor(self) -> float:
        return float(self.ae_params["scale_factor"])

    @property
    def ae_shift_factor(self) -> float:
        return float(self.ae_params["shift_factor"])

    @property
    def stores_text(self) -> bool:
        """Whether this dataset's stores hold ``t5``/``clip`` (else they live in ``text_dataset``)."""
        return self.text_dataset is None

    @property
    def compact_text(self) -> bool:
        return self.text_mode == COMPACT_TEXT

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for optional in ("text_dataset", "text_mode"):  # absent: the digest datasets always had
            if data[optional] is None:
                del data[optional]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Identity":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ContractError(f"dataset schema version {version} is not the supported {SCHEMA_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ContractError(f"unknown identity fields {sorted(unknown)}")
        return cls(**data)

    def digest(self) -> str:
        """A short stable hash of the identity, recorded in every store so a stray store is detectable."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def differences(self, other: "Identity") -> list[str]:
        """Human-readable list of fields that differ, for refusal messages."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


@dataclass(frozen=True)
class ArraySpec:
    """One per-sample array: ``shape`` excludes the sample axis; ``logical_dtype`` is what readers see."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    logical_dtype: str
    is_tensor: bool = False


def array_specs(identity: Identity) -> dict[str, ArraySpec]:
    """The arrays of one store, in write order."""
    stored = "uint16" if identity.storage_dtype == "bfloat16" else "float32"
    latent = (identity.latent_channels, identity.latent_size, identity.latent_size)

    def tensor(name: str, shape: tuple[int, ...]) -> ArraySpec:
        return ArraySpec(name, shape, stored, identity.storage_dtype, is_tensor=True)

    text = list(text_specs(identity).values())
    paired = [ArraySpec(TEXT_INDEX, (), "int64", "int64")]
    specs = [
        *(text if identity.stores_text else paired),
        tensor(AE_MEAN, latent),
        tensor(AE_LOGVAR, latent),
        ArraySpec(KEY, (), "str", "str"),
        ArraySpec(CAPTION, (), "str", "str"),
        ArraySpec(ORIGINAL_SIZE, (2,), "int32", "int32"),
        ArraySpec(CROP_BOX, (4,), "int32", "int32"),
    ]
    return {s.name: s for s in specs}


def text_specs(identity: Identity) -> dict[str, ArraySpec]:
    """``t5`` and ``clip`` as stored under ``identity`` (or under its text dataset's, which has the same
    text fields and storage dtype)."""
    stored = "uint16" if identity.storage_dtype == "bfloat16" else "float32"
    specs = [
        ArraySpec(T5, (identity.t5_max_length, identity.t5_dim), stored, identity.storage_dtype, is_tensor=True),
        ArraySpec(CLIP, (identity.clip_dim,), stored, identity.storage_dtype, is_tensor=True),
    ]
    if identity.compact_text:
        specs.append(ArraySpec(T5_LENGTH, (), "int32", "int32"))
    return {s.name: s for s in specs}


def empty_prompt_specs(identity: Identity) -> dict[str, ArraySpec]:
    """The empty caption's encodings: same tensors as a store's ``t5``/``clip``, one sample."""
    return text_specs(identity)


def prompt_specs(identity: Identity) -> dict[str, ArraySpec]:
    """A prompt set's ``prompts.zarr``: a store's ``t5``/``clip`` plus the prompt's text."""
    return {**empty_prompt_specs(identity), PROMPT: ArraySpec(PROMPT, (), "str", "str")}


TEXT_ENCODERS = ("t5", "clip", "t5_tokenizer", "clip_tokenizer")
TEXT_FIELDS = ("t5_max_length", "t5_dim", "clip_dim", "text_mode")


ARRAY_DOCS = {
    T5: "T5 last_hidden_state over all max_length positions (no mask, as TorchTitan; compact: masked, zero padded)",
    T5_LENGTH: "compact text: real T5 tokens of the caption (EOS included, at most max_length)",
    CLIP: "CLIP-L pooler_output over 77 tokens",
    AE_MEAN: "AE encoder posterior mean, before scale/shift",
    AE_LOGVAR: "AE encoder posterior log-variance",
    KEY: "WebDataset sample key (unique within a store)",
    CAPTION: "caption text as tokenized",
    ORIGINAL_SIZE: "decoded image (width, height) before resizing",
    CROP_BOX: "(left, top, right, bottom) of the square crop in the resized image",
    PROMPT: "prompt text, one line of the prompts file",
    TEXT_INDEX: "row of the same-named store of the text dataset holding this key's t5/clip",
}


# --------------------------------------------------------------------------- store attributes

TRUNCATED_TAR_SKIP = "truncated_tar"
"""The skip reason a store records (once) when its source tar broke off."""


@dataclass(frozen=True)
class SourceFingerprint:
    """What a store was made from, so a rerun re-encodes a store whose source tar was replaced.

    ``digest`` is the listing's own content tag where the filesystem gives one (``etag:``, the Hub's
    LFS SHA-256 as ``sha256:``) and otherwise ``ends:`` + SHA-256 of the first and last MiB: cheap,
    and independent of mtimes, which copies do not keep.
    """

    size: int
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class StoreAttrs:
    """Root attributes of a committed store: enough to summarise a dataset without opening arrays."""

    source: str
    identity_digest: str
    num_samples: int
    samples_per_shard: int
    skipped: dict[str, int] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    stored_bytes: int = 0
    raw_bytes: int = 0
    written_by: dict[str, Any] = field(default_factory=dict)
    source_fingerprint: dict[str, Any] = field(default_factory=dict)
    """``SourceFingerprint.to_dict()`` of the tar this store was made from (empty: not recorded)."""
    truncated_at_byte: int | None = None
    """Where the source tar broke off (a damaged source: its store holds the whole samples before)."""
    schema_version: int = SCHEMA_VERSION
    text_store: dict[str, str] = field(default_factory=dict)
    """An image dataset's store: the text store it pairs with, ``{"name", "key_checksum"}`` (the text
    store's ``checksums["key"]`` when this store was written), so a rewritten text store is detected."""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not self.text_store:
            del data["text_store"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StoreAttrs":
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ContractError(f"store schema version {data.get('schema_version')} != {SCHEMA_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def samples_read(self) -> int:
        """Samples of the source that were read, stored or skipped (the tar-level skip not counted)."""
        return self.num_samples + sum(n for reason, n in self.skipped.items() if reason != TRUNCATED_TAR_SKIP)


# --------------------------------------------------------------------------- paths


def store_name(source: str | os.PathLike) -> str:
    """Store file name for an input tar: ``cc12m-train-0042.tar`` -> ``cc12m-train-0042.zarr``."""
    stem = Path(source).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem + STORE_SUFFIX


def shards_dir(dataset: str | os.PathLike) -> Path:
    return Path(dataset) / SHARDS_DIR


def committed_store_paths(dataset: str | os.PathLike) -> list[Path]:
    """Committed stores (final names only), sorted by name."""
    root = shards_dir(dataset)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.endswith(STORE_SUFFIX) and not p.name.startswith("."))


def temporary_store_paths(dataset: str | os.PathLike) -> list[Path]:
    root = shards_dir(dataset)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if is_temporary(p))


# --------------------------------------------------------------------------- identity file


def write_identity(dataset: str | os.PathLike, identity: Identity, extra: dict[str, Any] | None = None) -> Identity:
    """Create ``dataset.json`` atomically, or check that the existing one has the same identity.

    Racing tasks may both call this: the file is written under a private name and hard-linked into
    place, so exactly one wins and the others compare against it.
    """
    path = Path(dataset) / DATASET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(temporary_name(DATASET_FILE))
        payload = {"identity": identity.to_dict(), "identity_digest": identity.digest(), **(extra or {})}
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        fsync_file(tmp)
        try:
            os.link(tmp, path)
            fsync_dir(path.parent)  # the link itself must survive a crash, or the dataset has no identity
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    existing = read_identity(dataset)
    if existing != identity:
        diff = "\n  ".join(existing.differences(identity))
        raise ContractError(f"{path} was made with another identity; refusing to mix:\n  {diff}")
    return existing


def read_dataset_json(dataset: str | os.PathLike) -> dict[str, Any]:
    path = Path(dataset) / DATASET_FILE
    if not path.is_file():
        raise ContractError(f"{dataset} is not a dataset: {DATASET_FILE} is missing")
    return json.loads(path.read_text())


def read_identity(dataset: str | os.PathLike) -> Identity:
    return Identity.from_dict(read_dataset_json(dataset)["identity"])


def read_store_attrs(store: str | os.PathLike) -> StoreAttrs:
    """Read a store's root attributes straight from its ``zarr.json`` (fast: one small file)."""
    meta = json.loads((Path(store) / "zarr.json").read_text())
    return StoreAttrs.from_dict(meta.get("attributes", {}))
