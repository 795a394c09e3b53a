"""Command line of ``shared.assets`` (see the package docstring)."""

from __future__ import annotations

import argparse
import sys

import shared.assets as assets


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
    fetch = commands.add_parser("fetch", help="download the real files (HF_TOKEN, ~10 GB)")
    fetch.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    try:
        if args.command == "tiny":
            print(f"wrote tiny assets (seed {args.seed}) to {assets.write_tiny_assets(args.out, args.seed)}")
        elif args.command == "sample-data":
            paths = assets.write_sample_tars(args.out, args.shards, args.per_shard, args.seed)
            print(f"wrote {len(paths)} tars x {args.per_shard} samples to {args.out}")
        else:
            print(f"fetched and verified {assets.fetch_assets(args.out)}")
    except assets.FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
