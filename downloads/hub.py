"""What every download from the Hugging Face Hub shares: the token, a disk-space check, one-line errors,
and a thin listing/download wrapper of one repository.

A user reads these errors in a Slurm log, so each is one line, says what to do, and never echoes the
token. ``HF_HOME`` is left to the Hub client: it keeps its own state (metadata, Xet cache) there.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from downloads.mirror import FetchError, RemoteFile


HEADROOM = 1.05
"""Free space asked for beyond the bytes still to download (filesystem overhead, other writers)."""


def require_token(repo_id: str) -> str:
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise FetchError(f"HF_TOKEN is not set; export a Hugging Face token that can read {repo_id}")
    return token


def require_space(out: Path, missing_bytes: int, free: int) -> None:
    """Refuse to start a download that cannot fit (``free`` is passed in so callers and tests choose it)."""
    needed = missing_bytes * HEADROOM
    if free < needed:
        raise FetchError(f"not enough disk space for {out}: {free / 1e9:.1f} GB free, {needed / 1e9:.1f} GB needed")


@contextmanager
def hub_errors(repo_id: str, token: str, out: Path) -> Iterator[None]:
    """Turn the Hub client's exceptions raised inside the block into one-line ``FetchError``s."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        yield
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, *_transport_errors()) as e:
        cause = e.__cause__ or e
        message = f"cannot reach {constants.ENDPOINT} (network unreachable?): {type(cause).__name__}: {cause}"
    except GatedRepoError:
        message = f"{repo_id} is gated for this HF_TOKEN's account: accept its licence on the Hub first"
    except RepositoryNotFoundError:
        message = f"HF_TOKEN was refused, or cannot see {repo_id}"
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        message = f"download from {constants.ENDPOINT} failed with HTTP {status}"
    except OSError as e:
        message = f"download into {out} failed: {e.strerror or e}"
    else:
        return
    raise FetchError(" ".join(message.replace(token, "<HF_TOKEN>").split())) from None


def _transport_errors() -> tuple[type[Exception], ...]:
    """Network errors of the Hub's HTTP client: ``httpx2`` since huggingface_hub 2, ``httpx`` before."""
    errors = []
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except ImportError:
            pass
    return tuple(errors)


class HubDataset:
    """The files of a Hub dataset repository whose names match ``pattern`` (a ``mirror.Remote``)."""

    def __init__(self, repo_id: str, token: str, pattern: re.Pattern[str]):
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # one progress line of ours instead of a bar per parallel download
        self.repo_id, self.token, self.pattern = repo_id, token, pattern

    def __str__(self) -> str:
        return self.repo_id

    def list_files(self) -> list[RemoteFile]:
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        api = HfApi(token=self.token)
        # The tree listing retries for ~25 s on network errors; this single request (no retries) makes
        # a dead network or a refused token fail at once.
        api.dataset_info(self.repo_id)
        return [
            RemoteFile(entry.path, entry.size, entry.lfs.sha256 if entry.lfs else None)
            for entry in api.list_repo_tree(self.repo_id, repo_type="dataset", recursive=True)
            if isinstance(entry, RepoFile) and self.pattern.fullmatch(PurePosixPath(entry.path).name)
        ]

    def fetch(self, file: RemoteFile, staging: Path) -> Path:
        from huggingface_hub import hf_hub_download

        # With local_dir the client resumes its own partial file (HTTP range) after a kill.
        return Path(hf_hub_download(self.repo_id, file.path, repo_type="dataset", local_dir=staging, token=self.token))
