"""Start TorchTitan's training main with Stage 2's trainer, on CPU/gloo when there is no GPU.

After a clean run the process exits hard: with gloo, about 1 run in 10 otherwise aborts during
interpreter finalisation (SIGABRT from a gloo worker thread, a known upstream issue) after training
has finished, and torchrun would report the job as failed.
"""

from __future__ import annotations

import gc
import logging
import os
import sys

import torchtitan.train

import stage2_train.train_spec  # noqa: F401  (registers the TrainSpec)
from shared.contract import ContractError
from stage2_train import cli_help, log_filter
from stage2_train.device import use_cpu_if_no_cuda
from stage2_train.trainer import PrecomputedFluxTrainer


def main() -> None:
    if cli_help.printed_help(sys.argv[1:]):
        return
    log_filter.install()
    use_cpu_if_no_cuda()
    try:
        torchtitan.train.main(PrecomputedFluxTrainer)  # raises on failure: the normal exit reports it
    except ContractError as exc:  # bad data (a corrupt chunk, another model's dataset): one line, no traceback
        print(
            f"stage2_train: error: {_own_message(exc)} (--stage2.on_corrupt skip leaves unreadable samples out and counts them; "
            f"python -m shared.inspect_shards DATASET --verify names every damaged store)",
            file=sys.stderr, flush=True,
        )
        os._exit(1)
    gc.collect()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _own_message(exc: ContractError) -> str:
    """The error's own text, also when a DataLoader worker raised it (torch re-raises it with the
    worker's traceback as its message)."""
    text = str(exc)
    return text.rsplit("ContractError: ", 1)[-1].strip() if "Original Traceback" in text else text
