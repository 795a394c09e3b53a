"""The dataset identity Stage 1 builds, writes and checks: encoders, tokenizers and every setting that
shapes the stored tensors (``shared.contract.Identity``) — of a full encode, of an image-only encode
paired with a text dataset (``--text-from``), and of a prompt set. Built here and nowhere else."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from shared import contract, pairing
from shared.contract import ContractError, Identity
from shared.pairing import TextDataset
from stage1_encode.config import EncodeConfig
from stage1_encode.decode import ImagePolicy
from stage1_encode.errors import Stage1Error

CODE_VERSION = "stage1_encode/1"
"""Bump when Stage 1 changes what it stores for the same inputs and encoders (not on every commit:
resuming a dataset after an unrelated change must stay possible)."""

CAPTION_POLICY = {
    "caption": "strict UTF-8 as stored in the tar, unstripped (as HF datasets reads .txt); empty or whitespace-only skipped",
    "tokenizers": "FluxTokenizer semantics: truncation, padding='max_length' (T5 t5_max_length, CLIP 77)",
}


def image_policy(config: EncodeConfig) -> ImagePolicy:
    return ImagePolicy(size=config.image.size, jpeg_draft=config.image.jpeg_draft, max_pixels=config.image.max_pixels)


def build_identity(
    config: EncodeConfig,
    hashes: dict[str, dict[str, str]],
    ae_params: dict,
    dims: tuple[int, int],
    compute: dict[str, object],
) -> Identity:
    """``dims`` = (T5 width, CLIP width); ``compute`` = the encoders' dtype and compilation, which change
    the numbers too, so stores computed differently never mix in one dataset."""
    return Identity(
        t5_max_length=config.text.t5_max_length,
        t5_dim=dims[0],
        clip_dim=dims[1],
        image_size=config.image.size,
        ae_params=ae_params,
        storage_dtype=config.storage.dtype,
        encoders=hashes,
        preprocessing=preprocessing(config, compute),
        code_version=CODE_VERSION,
        text_mode=text_mode(config),
    )


def text_mode(config: EncodeConfig) -> str | None:
    """``Identity.text_mode`` of this config: ``"compact"``, or ``None`` for the exact mode."""
    return contract.COMPACT_TEXT if config.text.compact else None


def preprocessing(config: EncodeConfig, compute: dict[str, object]) -> dict[str, object]:
    """How samples become stored numbers, as an identity records it."""
    return {**image_policy(config).describe(), **CAPTION_POLICY, "encoder_compute": compute}


def same_settings(config: EncodeConfig, compute: dict[str, object], identity: Identity) -> bool:
    """Whether ``identity`` records this config's settings, as far as they are known without loading a
    weight (a rerun with other settings then loads the encoders, and ``register_dataset`` refuses it)."""
    return (
        identity.image_size == config.image.size
        and identity.storage_dtype == config.storage.dtype
        and identity.preprocessing == preprocessing(config, compute)
        and (not identity.stores_text or identity.t5_max_length == config.text.t5_max_length)
        and identity.text_mode == text_mode(config)
    )


def paired_identity(config: EncodeConfig, encoders: Any, text: TextDataset, compute: dict[str, object]) -> Identity:
    """This run's image settings and AE, with TEXT's text fields and text encoder hashes."""
    identity = build_identity(config, encoders.hashes, encoders.ae_params, (text.identity.t5_dim, text.identity.clip_dim), compute)
    return dataclasses.replace(
        identity,
        **pairing.paired_text_fields(text.identity),
        encoders={**identity.encoders, **pairing.text_encoder_hashes(text.identity)},
    )


def compute_record(dtype: torch.dtype, compile_: bool) -> dict[str, object]:
    """How the encoders ran, for the identity (it changes the numbers too)."""
    return {"dtype": str(dtype).removeprefix("torch."), "compile": compile_}


def register_dataset(dataset: Path, assets: Path, identity: Identity, extra: dict[str, Any] | None = None) -> None:
    """``dataset.json`` with the assets directory (and ``extra``) beside the identity; refuses a dataset
    made otherwise."""
    try:
        contract.write_identity(dataset, identity, extra={contract.ASSETS_DIR_KEY: str(assets.resolve()), **(extra or {})})
    except ContractError as exc:
        differences = "; ".join(line.strip() for line in str(exc).splitlines()[1:])
        raise Stage1Error(
            f"{dataset} was encoded with another identity; refusing to add to it (differences: {differences[:500]}). "
            f"Use a new --output, or the settings and assets it was made with."
        ) from exc
