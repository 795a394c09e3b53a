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
from torchtitan.train import Trainer

import stage2_train.train_spec  # noqa: F401  (registers the TrainSpec)
from stage2_train.device import use_cpu_if_no_cuda
from stage2_train.trainer import PrecomputedFluxTrainer


def main() -> None:
    run_trainer(PrecomputedFluxTrainer)


def run_trainer(trainer_cls: type[Trainer]) -> None:
    """TorchTitan's main with ``trainer_cls`` (the benchmark runs the stock trainer through it too)."""
    use_cpu_if_no_cuda()
    torchtitan.train.main(trainer_cls)  # raises on failure: the normal exit reports it
    gc.collect()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
