"""Download the FLUX.1-schnell files Stage 1 needs (ae, CLIP-L, T5-XXL and their tokenizers), ~10 GB.

Fails early with one line, never echoing the token: no ``HF_TOKEN``, too little disk for what is still
missing, Hub unreachable, token refused. A finished fetch also fills the hash cache, so the array
job's tasks do not each re-hash 9.5 GB of T5 weights.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO_ID = "black-forest-labs/FLUX.1-schnell"
ALLOW_PATTERNS = ["ae.safetensors", "text_encoder/*", "tokenizer/*", "text_encoder_2/*", "tokenizer_2/*"]
EXPECTED_BYTES = 10_110_000_000
"""Size of those files on the Hub: T5-XXL 9.52 GB, ae 0.34 GB, CLIP-L 0.25 GB, tokenizers ~3 MB."""
HEADROOM = 1.05


class FetchError(RuntimeError):
    """The download cannot start or did not finish; the message is one line and safe to log."""


def fetch_assets(out: str | os.PathLike) -> Path:
    """Download into ``out`` (resumable: files already there are kept) and verify the result."""
    out = Path(out)
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise FetchError(f"HF_TOKEN is not set; export a Hugging Face token that can read {REPO_ID}")
    needed = max(0, EXPECTED_BYTES - _present_bytes(out)) * HEADROOM
    free = free_bytes(out)
    if free < needed:
        raise FetchError(f"not enough disk space for {out}: {free / 1e9:.1f} GB free, {needed / 1e9:.1f} GB needed")
    _download(out, token)

    from shared.encoders import AssetsError, asset_hashes

    try:
        asset_hashes(out)  # checks completeness, then caches the digests for every later run
    except AssetsError as e:
        raise FetchError("the download is not usable: " + "; ".join(str(e).splitlines())) from None
    return out


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) ``path``."""
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _present_bytes(out: Path) -> int:
    return sum(p.stat().st_size for pattern in ALLOW_PATTERNS for p in out.glob(pattern) if p.is_file())


def _download(out: Path, token: str) -> None:
    import httpx
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        snapshot_download(REPO_ID, allow_patterns=ALLOW_PATTERNS, local_dir=out, token=token)
    except (LocalEntryNotFoundError, httpx.TransportError) as e:
        cause = e.__cause__ or e
        message = f"cannot reach {constants.ENDPOINT} (network unreachable?): {type(cause).__name__}: {cause}"
    except GatedRepoError:
        message = f"{REPO_ID} is gated for this HF_TOKEN's account: accept its licence on the Hub first"
    except RepositoryNotFoundError:
        message = f"HF_TOKEN was refused, or cannot see {REPO_ID}"
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        message = f"download from {constants.ENDPOINT} failed with HTTP {status}"
    except OSError as e:
        message = f"download into {out} failed: {e.strerror or e}"
    else:
        return
    raise FetchError(" ".join(message.replace(token, "<HF_TOKEN>").split())) from None
