"""Start TorchTitan's training main with Stage 2's trainer, on CPU/gloo when there is no GPU.

The process always exits hard, with 0 or the failure's status: with gloo, about 1 clean run in 10
otherwise aborts during interpreter finalisation (SIGABRT from a gloo worker thread, a known upstream
issue) and torchrun would report it failed; after a failure, multiprocessing's exit hook would wait
forever for DataLoader workers, which ignore SIGTERM (see ``stop_request.ignore_sigterm``).
Bad data (a corrupt chunk, another model's dataset) ends the run with one line, not a traceback.
Once the trainer runs, any other error's traceback goes to the rank's own log (``liveness``): the
launcher's one line about the failure names it.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import traceback

import torchtitan.train
from torchtitan.train import Trainer

import stage2_train.train_spec  # noqa: F401  (registers the TrainSpec)
from shared.contract import ContractError
from stage2_train.cli import help as cli_help
from stage2_train.infra import liveness
from stage2_train.infra.device import use_cpu_if_no_cuda
from stage2_train.monitor import log_filter
from stage2_train.trainer import PrecomputedFluxTrainer


def main() -> None:
    if cli_help.printed_help(sys.argv[1:]):
        return
    log_filter.install()
    run_trainer(PrecomputedFluxTrainer)


def run_trainer(trainer_cls: type[Trainer]) -> None:
    """TorchTitan's main with ``trainer_cls`` (the benchmark runs the stock trainer through it too)."""
    use_cpu_if_no_cuda()
    status = 0
    try:
        torchtitan.train.main(trainer_cls)
    except SystemExit as exc:  # TorchTitan's config parser, with its own message
        status = exc.code if isinstance(exc.code, int) else 1
    except ContractError as exc:
        _record_end(exc)
        print(
            f"stage2_train: error: {_own_message(exc)} (--stage2.on_corrupt skip leaves unreadable samples out and "
            f"counts them; python -m shared.inspect_shards DATASET --verify names every damaged store)",
            file=sys.stderr, flush=True,
        )
        status = 1
    except Exception as exc:
        if not _record_end(exc):
            traceback.print_exc()
        status = 1
    else:
        _record_end(None)
    gc.collect()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _record_end(exc: BaseException | None) -> bool:
    """This rank's exit record for the launcher; False before the trainer started its liveness. A rank's
    own error gets one line here too; one that only waited for another rank (a collective's timeout,
    a peer gone) stays quiet: every rank but the culprit would say it."""
    rank = liveness.current()
    if rank is None:
        return False
    rank.ended(exc)
    if exc is not None and not isinstance(exc, ContractError) and not liveness.waited(exc):
        print(f"stage2_train: rank {rank.beat.rank} failed at step {(rank.beat.step or 0) + 1}: {liveness.cause(exc)} "
              f"(traceback: {rank.log})", file=sys.stderr, flush=True)
    return True


def _own_message(exc: ContractError) -> str:
    """The error's own text, also when a DataLoader worker raised it (torch re-raises it with the
    worker's traceback as its message)."""
    text = str(exc)
    return text.rsplit("ContractError: ", 1)[-1].strip() if "Original Traceback" in text else text
