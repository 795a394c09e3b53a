"""A Stage 2 log a person can read: one line per step, each distinct warning once.

With N nodes, torchrun's ``--local-ranks-filter`` keeps local rank 0 of *every* node, so each step
printed N times, and CPU/DTensor/autocast warnings and TorchTitan's missing-``lspci`` warning came
from every rank at every occurrence. Installed before TorchTitan starts (``launch``):

* ranks other than global rank 0 log errors only (in SPMD their step lines and warnings repeat rank 0's);
* a warning (``warnings.warn`` or TorchTitan's logger) is shown once per distinct message;
* TorchTitan's own step line is dropped: ``metrics.SampleMetricsProcessor`` prints one line that
  merges its figures (loss, grad norm, memory) with the project's (samples/s/GPU, MFU, data wait).
"""

from __future__ import annotations

import logging
import os
import warnings

TITAN_STEP_LINE = "tflops: "
"""A fragment only TorchTitan's per-step console line holds (the merged line says MFU instead)."""


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
        if record.levelno < logging.WARNING:
            return TITAN_STEP_LINE not in record.getMessage()
        message = record.getMessage()  # a warning: shown the first time only
        if message in self._warned:
            return False
        self._warned.add(message)
        return True


def install(environ: dict[str, str] | os._Environ = os.environ) -> ReadableLog:
    """Filter this process's log and warnings; ``RANK`` is torchrun's global rank."""
    readable = ReadableLog(int(environ.get("RANK", "0")))
    logging.getLogger().addFilter(readable)
    warnings.simplefilter("once")
    logging.captureWarnings(True)  # warnings become WARNING records, so the filter sees them per rank
    logging.getLogger("py.warnings").addFilter(readable)
    return readable
