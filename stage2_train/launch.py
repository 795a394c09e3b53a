"""Start TorchTitan's training main with Stage 2's trainer, on CPU/gloo when there is no GPU.

The process always exits hard, with 0 or the failure's status: with gloo, about 1 clean run in 10
otherwise aborts during interpreter finalisation (SIGABRT from a gloo worker thread, a known upstream
issue) and torchrun would report it failed; after a failure, multiprocessing's exit hook would wait
forever for DataLoader workers, which ignore SIGTERM (see ``stop_request.ignore_sigterm``).
Bad data (a corrupt chunk, another model's dataset) and a refused request (``refusals``) end the run
with one line, not a traceback; torchrun's failure summary names that line instead of a traceback.
Started without torchrun (``python -m stage2_train …``), it trains as one process, with the environment
torchrun would have given it.
Once the trainer runs, any other error's traceback goes to the rank's own log (``liveness``): the
launcher's one line about the failure names it.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import MutableMapping

import torchtitan.train
from torchtitan.train import Trainer

import stage2_train.train_spec  # noqa: F401  (registers the TrainSpec)
from shared.contract import ContractError
from stage2_train.infra import liveness
from stage2_train.infra.device import use_cpu_if_no_cuda
from stage2_train.monitor import log_filter
from stage2_train.refusals import Refusal
from stage2_train.trainer import PrecomputedFluxTrainer


def main() -> None:
    if as_one_process(os.environ):
        print("stage2_train: not started by torchrun: training as one process (more: torchrun --nproc_per_node=N "
              "-m stage2_train …, or sbatch slurm/train.sbatch)", file=sys.stderr, flush=True)
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
    except Refusal as exc:  # the same on every rank: global rank 0 says it
        if os.environ.get("RANK", "0") == "0":
            _say(f"stage2_train: error: {exc}")
        status = 1
    except ContractError as exc:
        _record_end(exc)
        _say(
            f"stage2_train: error: {_own_message(exc)} (--stage2.on_corrupt skip leaves unreadable samples out and "
            f"counts them; python -m shared.inspect_shards DATASET --verify names every damaged store)"
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


def as_one_process(environ: MutableMapping[str, str]) -> bool:
    """Give a process torchrun did not start the environment of torchrun's only rank (True), else False."""
    if "LOCAL_RANK" in environ:
        return False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    single = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    environ.update({**single, "MASTER_PORT": str(port)})
    return True


def _say(line: str) -> None:
    """The failure's one line, on stderr and in torchrun's failure summary (its error file, which
    would otherwise hold the traceback TorchTitan's ``@record`` wrote there)."""
    print(line, file=sys.stderr, flush=True)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        with open(error_file, "w") as f:
            json.dump({"message": line, "timestamp": int(time.time())}, f)
