"""What a Stage 1 run sets up in a dataset before its first store: the compute settings, the identity and
the empty prompt's encodings (stale temporaries are ``cleanup``'s).

Array tasks and the prompt-set command both start here, so a prompt set made with a dataset's assets
and config gets the dataset's identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from shared import contract, torch_storage
from shared.contract import Identity
from shared.store import StoreWriter
from stage1_encode.captions import tokenize
from stage1_encode.config import EncodeConfig
from stage1_encode.encode import BatchEncoder
from stage1_encode.identity import build_identity, compute_record


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


def encode_empty_prompt(encoder: BatchEncoder, tokenizers: tuple[Any, Any], t5_max_length: int) -> dict[str, torch.Tensor]:
    t5, clip = tokenize(tokenizers, [""], t5_max_length)
    return encoder.encode_text(t5, clip)


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
