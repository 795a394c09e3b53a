"""A Stage 2 log a person can read: one line per step, each distinct warning once.

With N nodes, torchrun's ``--local-ranks-filter`` keeps local rank 0 of *every* node, so each step
printed N times, and CPU/DTensor/autocast warnings and TorchTitan's missing-``lspci`` warning came
from every rank at every occurrence. Installed before TorchTitan starts (``launch``):

* ranks other than global rank 0 log errors only (in SPMD their step lines and warnings repeat rank 0's);
* a warning (``warnings.warn`` or TorchTitan's logger) is shown once per distinct message;
* TorchTitan's own step line is dropped: ``metrics.SampleMetricsProcessor`` prints one line that
  merges its figures (loss, grad norm, memory) with the project's (samples/s/GPU, MFU, data wait);
* third-party lines that ask nothing of the user (``NOISE``: the model config as JSON, a missing ``lspci``,
  safetensors-index notes, mesh and process-group chatter) leave the console.
Once the trainer knows its dump folder, ``keep_full_log`` writes every record of the rank, those too, to
``<dump_folder>/logs/<start>/rank_<r>.log`` (``liveness.rank_log``) and says so in one line: nothing is
lost, only moved.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

TITAN_STEP_LINE = "tflops: "
"""A fragment only TorchTitan's per-step console line holds (the merged line says MFU instead)."""
NOISE = (
    "torchtitan version", "[GC] ", "Building flux", "CPU capacity", "lspci", "Peak flops undefined",
    "Peak FLOPS used", "memory usage for model", "safetensors.index.json", "no safetensors index",
    "Mixed precision training is handled", "Building device mesh", "Successfully created meshes",
    "Synchronizing and adjusting timeout", "Sleeping ", "Process group destroyed", "'set_vital' is deprecated",
    "In CPU autocast, but the target dtype", "TensorBoard logging enabled", "ENV[TORCH_NCCL_ASYNC_ERROR_HANDLING]",
    "DTensor", "neither validation.dataset_path nor prompts_path",
)  # fmt: skip
"""Fragments of third-party (and one own) log lines kept out of the console, in the per-rank file only."""


class ReadableLog(logging.Filter):
    """The filter on TorchTitan's logger (the root logger: its ``init_logger`` keeps filters)."""

    def __init__(self, global_rank: int) -> None:
        super().__init__()
        self._global_rank = global_rank
        self._warned: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if self._global_rank != 0:
            return False
        message = record.getMessage()
        if any(fragment in message for fragment in NOISE):
            return False
        if record.levelno < logging.WARNING:
            return TITAN_STEP_LINE not in message
        # a warning: shown the first time only
        if message in self._warned:
            return False
        self._warned.add(message)
        return True


def install(environ: Mapping[str, str] = os.environ) -> ReadableLog:
    """Filter this process's log and warnings; ``RANK`` is torchrun's global rank."""
    readable = ReadableLog(_rank(environ))
    logging.getLogger().addFilter(readable)
    warnings.simplefilter("once")
    logging.captureWarnings(True)  # warnings become WARNING records, so the filter sees them per rank
    logging.getLogger("py.warnings").addFilter(readable)
    return readable


def keep_full_log(path: Path) -> None:
    """Every record of this rank to ``path``; the console keeps only what ``ReadableLog`` lets through.
    Call after TorchTitan's ``init_logger``, which replaces the root logger's handlers."""
    root, warned = logging.getLogger(), logging.getLogger("py.warnings")
    readable = next((f for f in root.filters if isinstance(f, ReadableLog)), None) or ReadableLog(_rank(os.environ))
    for logger in (root, warned):
        logger.removeFilter(readable)
    for handler in root.handlers:
        handler.addFilter(readable)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = logging.FileHandler(path)
    full.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    root.addHandler(full)
    root.info(f"full log of this rank (third-party messages too): {path}")


def _rank(environ: Mapping[str, str]) -> int:
    return int(environ.get("RANK", "0"))  # torchrun's global rank
