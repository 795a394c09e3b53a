"""Stage 1's assets directory: its layout, checks, hashes, and loading the text encoders and tokenizers.

The directory has the layout of the ``black-forest-labs/FLUX.1-schnell`` repository::

    ae.safetensors                      FLUX autoencoder (TorchTitan's module names are its key layout)
    text_encoder/    tokenizer/         CLIP-L text model (HF format) and its CLIPTokenizer files
    text_encoder_2/  tokenizer_2/       T5-XXL encoder (HF format) and its T5Tokenizer files

Every function here computes what TorchTitan 0.2.2's online Flux trainer computes from the same files
(same HF classes, same calls, same casts), so Stage 1's stored tensors are the online ones. The real
weights and the tiny test assets (``python -m fixtures tiny``) go through this same code; the AE loads through ``shared.ae``
(Stage 2 and inspect decode with it too).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from shared.ae import AE_FILE, AssetsError, safetensors_shapes
from shared.atomic import atomic_write
from shared.contract import CLIP_TOKENS
from shared.tokens import T5_TOKENIZER_DIR, FixedLengthTokenizer, load_t5_tokenizer

log = logging.getLogger(__name__)

CLIP_DIR, CLIP_TOKENIZER_DIR = "text_encoder", "tokenizer"
T5_DIR = "text_encoder_2"
ENCODER_DIRS = {"t5": T5_DIR, "clip": CLIP_DIR, "t5_tokenizer": T5_TOKENIZER_DIR, "clip_tokenizer": CLIP_TOKENIZER_DIR}
"""Folders whose every (non-hidden) file is part of an encoder's identity; ``ae`` is ``AE_FILE`` alone."""
TOKENIZER_FILES = {
    T5_TOKENIZER_DIR: ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"),
    CLIP_TOKENIZER_DIR: ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"),
}
HASH_CACHE = ".sha256-cache.json"


# --------------------------------------------------------------------------- checking and identity


def check_assets(assets_dir: str | os.PathLike) -> None:
    """Raise ``AssetsError`` listing every missing or unreadable file, before any expensive work.

    Safetensors headers are parsed (cheap), which also catches truncated downloads.
    """
    root = Path(assets_dir)
    problems: list[str] = []
    if not root.is_dir():
        raise AssetsError(f"assets directory {root} does not exist (python -m downloads fetch --out {root})")
    _check_safetensors(root, AE_FILE, problems)
    for folder in (CLIP_DIR, T5_DIR):
        _check_readable(root, f"{folder}/config.json", problems)
        for rel in _weight_files(root, folder, problems):
            _check_safetensors(root, rel, problems)
    for folder, names in TOKENIZER_FILES.items():
        for name in names:
            _check_readable(root, f"{folder}/{name}", problems)
    if problems:
        listing = "\n  ".join(problems)
        raise AssetsError(f"assets directory {root} is incomplete or unreadable:\n  {listing}")


def asset_hashes(assets_dir: str | os.PathLike) -> dict[str, dict[str, str]]:
    """SHA-256 (hex, as the Hub's LFS ids) of every weight, config and tokenizer file, per encoder.

    Hashing T5-XXL's 9.5 GB in each of 128 array tasks would cost minutes each, so digests are cached in
    ``<assets>/.sha256-cache.json`` keyed by (size, mtime_ns); when the directory is read-only every
    call hashes afresh.
    """
    root = Path(assets_dir)
    check_assets(root)
    groups = _asset_groups(root)
    cache = _read_cache(root)
    fresh = {}
    for rel in (rel for files in groups.values() for rel in files):
        entry = cache.get(rel)
        if not _cache_entry_current(root / rel, entry):
            stat = (root / rel).stat()
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256(root / rel)}
        fresh[rel] = entry
    if fresh != cache:
        _write_cache(root, fresh)
    return {name: {rel: fresh[rel]["sha256"] for rel in files} for name, files in groups.items()}


def cached_asset_hashes(assets_dir: str | os.PathLike) -> dict[str, dict[str, str]] | None:
    """What ``asset_hashes`` returns, read from its cache alone (a preflight must not hash 10 GB);
    ``None`` when any file is new or changed since it was last hashed."""
    root = Path(assets_dir)
    check_assets(root)
    groups = _asset_groups(root)
    cache = _read_cache(root)
    if not all(_cache_entry_current(root / rel, cache.get(rel)) for files in groups.values() for rel in files):
        return None
    return {name: {rel: cache[rel]["sha256"] for rel in files} for name, files in groups.items()}


# --------------------------------------------------------------------------- text encoders


class TextEncoder(nn.Module):
    """A HF text encoder called exactly as TorchTitan's ``FluxEmbedder`` calls it.

    Why not ``FluxEmbedder`` itself: it decides CLIP vs T5 by whether "clip" occurs in the path, and the
    FLUX repository names the CLIP folder ``text_encoder/``, so it would load CLIP as T5. Here the kind
    is explicit; the rest is FluxEmbedder's: ``from_pretrained`` in the checkpoint's own dtype, eval,
    no grad, then one ``.to(device, dtype)`` of the whole module, and ``attention_mask=None``. (A dtype
    passed to ``from_pretrained`` instead would keep T5's ``wo`` layers in fp32 for fp16, unlike TorchTitan.)
    """

    def __init__(self, hf_module: nn.Module, output_key: str):
        super().__init__()
        self.hf_module = hf_module
        self.output_key = output_key

    @property
    def dim(self) -> int:
        """Feature size of the output: T5 ``d_model`` (4096 for XXL) or CLIP ``hidden_size`` (768 for L)."""
        return self.hf_module.config.hidden_size

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` [B, L] int -> T5 ``last_hidden_state`` [B, L, D] or CLIP ``pooler_output`` [B, D]."""
        outputs = self.hf_module(
            input_ids=tokens.to(self.hf_module.device), attention_mask=None, output_hidden_states=False
        )
        return outputs[self.output_key]


def load_t5(
    assets_dir: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> TextEncoder:
    """T5 encoder from ``text_encoder_2/``; ``forward`` returns ``last_hidden_state`` [B, L, d_model]."""
    from transformers import T5EncoderModel

    return _load_text_encoder(Path(assets_dir) / T5_DIR, T5EncoderModel, "last_hidden_state", device, dtype)


def load_clip(
    assets_dir: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> TextEncoder:
    """CLIP text model from ``text_encoder/``; ``forward`` returns ``pooler_output`` [B, hidden]."""
    from transformers import CLIPTextModel

    return _load_text_encoder(Path(assets_dir) / CLIP_DIR, CLIPTextModel, "pooler_output", device, dtype)


def _load_text_encoder(path: Path, cls: type, output_key: str, device, dtype) -> TextEncoder:
    module, info = cls.from_pretrained(str(path), local_files_only=True, use_safetensors=True, output_loading_info=True)
    # from_pretrained only warns about missing weights and initialises them randomly: refuse instead.
    # Extra tensors in a checkpoint are ignored by TorchTitan too, so they are only reported.
    problems = {k: sorted(map(str, info.get(k) or ())) for k in ("missing_keys", "mismatched_keys", "error_msgs")}
    if any(problems.values()):
        raise AssetsError(f"{path} does not match {cls.__name__}'s architecture: {problems}")
    if info.get("unexpected_keys"):
        log.warning("%s: ignoring tensors %s", path, sorted(info["unexpected_keys"]))
    module = module.eval().requires_grad_(False)
    return TextEncoder(module, output_key).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------- tokenizers


def load_tokenizers(
    assets_dir: str | os.PathLike, t5_max_length: int
) -> tuple[FixedLengthTokenizer, FixedLengthTokenizer]:
    """(T5 tokenizer padded to ``t5_max_length``, CLIP tokenizer padded to 77), FluxTokenizer's classes and args."""
    from transformers import CLIPTokenizer

    clip_dir = str(Path(assets_dir) / CLIP_TOKENIZER_DIR)
    clip = CLIPTokenizer.from_pretrained(clip_dir, max_length=CLIP_TOKENS, local_files_only=True)
    return load_t5_tokenizer(assets_dir, t5_max_length), FixedLengthTokenizer(clip, CLIP_TOKENS)


# --------------------------------------------------------------------------- helpers


def _asset_groups(root: Path) -> dict[str, list[str]]:
    return {"ae": [AE_FILE]} | {name: _files_in(root, folder) for name, folder in ENCODER_DIRS.items()}


def _cache_entry_current(path: Path, entry: dict | None) -> bool:
    stat = path.stat()
    return bool(entry) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns


def _files_in(root: Path, folder: str) -> list[str]:
    return sorted(f"{folder}/{p.name}" for p in (root / folder).iterdir() if p.is_file() and not p.name.startswith("."))


def _weight_files(root: Path, folder: str, problems: list[str]) -> list[str]:
    """Safetensors files of an HF model folder: ``model.safetensors`` or the shards its index names."""
    index = root / folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            return [f"{folder}/{name}" for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        except (OSError, ValueError, KeyError) as e:
            problems.append(f"{folder}/{index.name}: unreadable ({e})")
            return []
    return [f"{folder}/model.safetensors"]


def _check_readable(root: Path, rel: str, problems: list[str]) -> bool:
    path = root / rel
    if not path.is_file():
        problems.append(f"{rel}: missing")
        return False
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        problems.append(f"{rel}: unreadable ({e.strerror or e})")
        return False
    return True


def _check_safetensors(root: Path, rel: str, problems: list[str]) -> None:
    if _check_readable(root, rel, problems):
        try:
            safetensors_shapes(root / rel)
        except Exception as e:  # safetensors raises its own error types for corrupt or truncated files
            problems.append(f"{rel}: not a valid safetensors file ({e})")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_cache(root: Path) -> dict[str, dict]:
    try:
        data = json.loads((root / HASH_CACHE).read_text())
        return data["files"] if data.get("version") == 1 else {}
    except (OSError, ValueError, KeyError, AttributeError):
        return {}


def _write_cache(root: Path, files: dict[str, dict]) -> None:
    """Atomic replace, so concurrent array tasks never see a half-written cache (the last one wins)."""
    try:
        atomic_write(root / HASH_CACHE, json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True))
    except OSError as e:
        log.warning("cannot write %s (%s); hashes are recomputed on every run", root / HASH_CACHE, e.strerror or e)
