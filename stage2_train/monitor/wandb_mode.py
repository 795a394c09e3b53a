"""Which mode wandb runs in, decided once in ``slurm/train.sbatch`` and said in the job's log.

``wandb login`` keeps its key in netrc (``~/.netrc`` or ``$NETRC``, machine ``api.wandb.ai`` or the
host of ``WANDB_BASE_URL``), not in ``WANDB_API_KEY``; either makes the run online. Without a key the
run is offline and its files stay beside TensorBoard's, for ``wandb sync`` later.

    python -m stage2_train.monitor.wandb_mode     prints: MODE<TAB>one line saying why and where files go
"""

from __future__ import annotations

import netrc
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_HOST = "api.wandb.ai"


def netrc_has_key(environ: Mapping[str, str]) -> bool:
    """Whether ``wandb login`` left a key for the wandb host in the user's netrc file."""
    path = Path(environ.get("NETRC") or Path(environ.get("HOME", "~")).expanduser() / ".netrc")
    host = urlparse(environ.get("WANDB_BASE_URL", "")).hostname or DEFAULT_HOST
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def decide(environ: Mapping[str, str]) -> tuple[str, str]:
    """(``WANDB_MODE``, why, and where an offline run's files go)."""
    offline_files = "offline files go to <dump_folder>/<metrics.save_tb_folder>/<time>/wandb/ (upload: wandb sync DIR)"
    if environ.get("WANDB_MODE"):
        mode = environ["WANDB_MODE"]
        return mode, f"wandb: {mode} (WANDB_MODE was set)" + (f"; {offline_files}" if mode == "offline" else "")
    if environ.get("WANDB_API_KEY"):
        return "online", "wandb: online (WANDB_API_KEY is set)"
    if netrc_has_key(environ):
        return "online", "wandb: online (a `wandb login` key in netrc)"
    return "offline", f"wandb: offline (no WANDB_API_KEY and no `wandb login` key in netrc); {offline_files}"


if __name__ == "__main__":
    print("\t".join(decide(os.environ)))
    sys.exit(0)
