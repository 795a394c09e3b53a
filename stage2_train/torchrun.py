"""``python -m stage2_train.torchrun …``: torchrun (same arguments) whose failure ends with its summary
of the failed ranks and their one-line errors, not with a traceback of torchrun's own.

A rank killed by a signal (SIGKILL, the OOM killer) leaves no exit record of its own; torchrun saw it
die, so with ``FLUX_DUMP_FOLDER`` set (``slurm/train.sbatch``) this writes one for it
(``liveness.record_killed``), and the launcher names it without guessing from heartbeat gaps.
"""

from __future__ import annotations

import os
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from stage2_train.infra.liveness import record_killed


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        dump = os.environ.get("FLUX_DUMP_FOLDER")
        for rank, failure in exc.failures.items() if dump else ():
            if failure.exitcode < 0:
                record_killed(dump, rank, -failure.exitcode, failure.timestamp)
        print(exc.format_msg(), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
