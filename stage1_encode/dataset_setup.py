"""What a Stage 1 run sets up in a dataset before its first store: the compute settings, the identity
(``dataset.json``), the empty prompt's encodings, and no temporaries left by killed writers.

Array tasks and the prompt-set command both start here, so a prompt set made with a dataset's assets
and config gets the dataset's identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from shared import contract, torch_storage
from shared.contract import ContractError, Identity
from shared.store import StoreWriter
from stage1_encode.captions import tokenize
from stage1_encode.config import EncodeConfig
from stage1_encode.encode import BatchEncoder
from stage1_encode.identity import build_identity
from stage1_encode.temporaries import remove_stale_temporaries
from stage1_encode.writer import remove_orphaned_buffers


class Stage1Error(RuntimeError):
    """A failure the user can act on, reported as one line (identity mismatch, full disk, …)."""


def resolve_compute(config: EncodeConfig) -> tuple[torch.device, torch.dtype, bool]:
    """``auto`` settings: CUDA when visible (Slurm sets CUDA_VISIBLE_DEVICES="" without GPUs), bf16 and
    compiled there; fp32 eager on CPU."""
    settings = config.encoders
    if settings.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(settings.device)
    on_gpu = device.type == "cuda"
    dtype_name = settings.dtype if settings.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
    compile_ = settings.compile == "on" or (settings.compile == "auto" and on_gpu)
    return device, getattr(torch, dtype_name), compile_


def identity_and_empty_prompt(
    config: EncodeConfig, encoders: Any, encoder: BatchEncoder, tokenizers: tuple[Any, Any], dtype: torch.dtype, compile_: bool
) -> tuple[Identity, dict[str, torch.Tensor]]:
    """The dataset identity, and the empty caption's encodings whose widths it records."""
    empty = encode_empty_prompt(encoder, tokenizers, config.text.t5_max_length)
    identity = build_identity(
        config,
        encoders.hashes,
        encoders.ae_params,
        dims=(empty[contract.T5].shape[-1], empty[contract.CLIP].shape[-1]),
        compute=compute_record(dtype, compile_),
    )
    return identity, empty


def compute_record(dtype: torch.dtype, compile_: bool) -> dict[str, object]:
    """How the encoders ran, for the identity (it changes the numbers too)."""
    return {"dtype": str(dtype).removeprefix("torch."), "compile": compile_}


def encode_empty_prompt(encoder: BatchEncoder, tokenizers: tuple[Any, Any], t5_max_length: int) -> dict[str, torch.Tensor]:
    t5, clip = tokenize(tokenizers, [""], t5_max_length)
    return encoder.encode_text(t5, clip)


def write_identity(dataset: Path, assets: Path, identity: Identity, extra: dict[str, Any] | None = None) -> None:
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


def remove_stale(dataset: Path, store_names: set[str], stale_after_s: float) -> None:
    """Temporaries of these stores (and of the empty prompt) that no live writer can own, and shared
    buffers of this host's killed tasks."""
    remove_orphaned_buffers()
    remove_stale_temporaries(contract.shards_dir(dataset), store_names, stale_after_s)
    remove_stale_temporaries(dataset, {contract.EMPTY_PROMPT_STORE}, stale_after_s)


def write_empty_prompt(dataset: Path, identity: Identity, empty: dict[str, torch.Tensor]) -> None:
    """Once per dataset; racing tasks compute the same bytes and the first commit wins."""
    path = dataset / contract.EMPTY_PROMPT_STORE
    if path.exists():
        return
    writer = StoreWriter(path, identity, contract.empty_prompt_specs(identity), "empty prompt", samples_per_shard=1)
    try:
        writer.append({name: torch_storage.to_storage(t, identity.storage_dtype) for name, t in empty.items()})
        writer.commit(skipped={})
    except BaseException:
        writer.abort()
        raise
