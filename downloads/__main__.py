"""Command line of ``downloads`` (see the package docstring)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import downloads
from downloads import cc12m
from shared.tasks import TaskSliceError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m downloads", description=downloads.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download the real files (HF_TOKEN, ~10 GB)")
    fetch.add_argument("--out", required=True)
    tars = commands.add_parser("cc12m", help=f"download {cc12m.REPO_ID}'s tars (HF_TOKEN, ~1 TB)")
    tars.add_argument("--out", required=True, type=Path)
    tars.add_argument("--shards", type=cc12m.parse_shards, default=range(cc12m.NUM_SHARDS),
                      help=f"inclusive range of tar indices, e.g. 0-9 (default: all, 0-{cc12m.NUM_SHARDS - 1})")
    tars.add_argument("--workers", type=int, default=8, help="parallel downloads (default: 8)")
    tars.add_argument("--verify", action="store_true", help="re-hash tars already there (default: size check)")
    tars.add_argument("--task-index", type=int, default=0, help="this task's share: tars i, i+N, … (Stage 1's)")
    tars.add_argument("--num-tasks", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "cc12m" and args.workers < 1:
        tars.error("--workers must be at least 1")

    try:
        if args.command == "fetch":
            print(f"fetched and verified {downloads.fetch_assets(args.out)}")
        else:
            names = cc12m.task_shards(args.shards, args.task_index, args.num_tasks)
            print(f"cc12m: {cc12m.download_cc12m(args.out, names, args.workers, args.verify)}")
    except (downloads.FetchError, TaskSliceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
