"""``python -m stage2_train.torchrun …``: torchrun (same arguments) whose failure ends with its summary
of the failed ranks and their one-line errors, not with a traceback of torchrun's own."""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        print(exc.format_msg(), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
