"""Download the FLUX.1-schnell files Stage 1 needs (ae, CLIP-L, T5-XXL and their tokenizers), ~10 GB.

Fails early with one line, never echoing the token: no ``HF_TOKEN``, too little disk for what is still
missing, Hub unreachable, token refused. A finished fetch also fills the hash cache, so the array
job's tasks do not each re-hash 9.5 GB of T5 weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from downloads.hub import FetchError, hub_errors, require_space, require_token
from preflight.storage import free_bytes

REPO_ID = "black-forest-labs/FLUX.1-schnell"
ALLOW_PATTERNS = ["ae.safetensors", "text_encoder/*", "tokenizer/*", "text_encoder_2/*", "tokenizer_2/*"]
EXPECTED_BYTES = 10_110_000_000
"""Size of those files on the Hub: T5-XXL 9.52 GB, ae 0.34 GB, CLIP-L 0.25 GB, tokenizers ~3 MB."""


def fetch_assets(out: str | os.PathLike) -> Path:
    """Download into ``out`` (resumable: files already there are kept) and verify the result."""
    out = Path(out)
    token = require_token(REPO_ID)
    require_space(out, max(0, EXPECTED_BYTES - _present_bytes(out)), free_bytes(out))
    _download(out, token)

    from stage1_encode.asset_loading import AssetsError, asset_hashes

    try:
        asset_hashes(out)  # checks completeness, then caches the digests for every later run
    except AssetsError as e:
        raise FetchError("the download is not usable: " + "; ".join(str(e).splitlines())) from None
    return out


def _present_bytes(out: Path) -> int:
    return sum(p.stat().st_size for pattern in ALLOW_PATTERNS for p in out.glob(pattern) if p.is_file())


def _download(out: Path, token: str) -> None:
    from huggingface_hub import snapshot_download

    with hub_errors(REPO_ID, token, out):
        snapshot_download(REPO_ID, allow_patterns=ALLOW_PATTERNS, local_dir=out, token=token)
