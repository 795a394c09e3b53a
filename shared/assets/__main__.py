"""Command line of ``shared.assets`` (see the package docstring)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import shared.assets as assets
from shared.assets import cc12m
from shared.tasks import TaskSliceError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.assets", description=assets.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    tiny = commands.add_parser("tiny", help="tiny random-weight assets in the FLUX.1-schnell layout")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--seed", type=int, default=0)
    sample = commands.add_parser("sample-data", help="CC12M-style WebDataset tars with real JPEGs")
    sample.add_argument("--out", required=True)
    sample.add_argument("--shards", type=int, required=True)
    sample.add_argument("--per-shard", type=int, required=True)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument(
        "--scale", type=int, default=1, choices=range(1, 5), metavar="K",
        help="multiply every image side by K (default 1: short sides 48-512 px, 1 in 8 below 256 px; 2: 96-1024 px, "
        "for trying a 512 px encode, --image.size 512)",
    )
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
        if args.command == "tiny":
            print(f"wrote tiny assets (seed {args.seed}) to {assets.write_tiny_assets(args.out, args.seed)}")
        elif args.command == "sample-data":
            paths = assets.write_sample_tars(args.out, args.shards, args.per_shard, args.seed, args.scale)
            print(f"wrote {len(paths)} tars x {args.per_shard} samples to {args.out}")
        elif args.command == "fetch":
            print(f"fetched and verified {assets.fetch_assets(args.out)}")
        else:
            names = cc12m.task_shards(args.shards, args.task_index, args.num_tasks)
            print(f"cc12m: {cc12m.download_cc12m(args.out, names, args.workers, args.verify)}")
    except (assets.FetchError, TaskSliceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
