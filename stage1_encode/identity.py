"""The dataset identity Stage 1 writes and checks: encoders, tokenizers and every setting that shapes
the stored tensors (``shared.contract.Identity``)."""

from __future__ import annotations

from shared.contract import Identity
from stage1_encode.config import EncodeConfig
from stage1_encode.decode import ImagePolicy

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
        preprocessing={**image_policy(config).describe(), **CAPTION_POLICY, "encoder_compute": compute},
        code_version=CODE_VERSION,
    )
