"""Command line of ``shared.preflight`` (see the package docstring)."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

import torch

import shared.preflight as preflight
from shared.preflight import stages
from shared.preflight.system import Cluster
from shared.preflight.table import failed, render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.preflight", description=preflight.__doc__, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Other arguments are the stage's config overrides (--section.key value).",
    )
    parser.add_argument("--stage", choices=("encode", "train"), help="default: from the config's sections")
    parser.add_argument("--config", type=Path, help="Stage 1 TOML, or Stage 2's TorchTitan TOML")
    parser.add_argument("--input", help="encode: directory, glob or URL (hf://datasets/…) of input tars")
    parser.add_argument("--output", type=Path, help="encode: the dataset; train: the dump folder")
    parser.add_argument("--assets", type=Path, help="encode: FLUX.1-schnell assets directory")
    parser.add_argument("--dataset", type=Path, help="train: the Stage 1 dataset (--training.dataset_path)")
    parser.add_argument("--hash", action="store_true", help="hash the assets now (and cache the digests)")
    args, rest = parser.parse_known_args(argv)
    cluster = Cluster.from_env(os.environ, torch.cuda.device_count())
    if (args.stage or infer_stage(args.config, rest)) == "encode":
        missing = [f"--{name}" for name in ("input", "output", "assets") if getattr(args, name) is None]
        if missing:
            parser.error(f"the encode stage needs {', '.join(missing)}")
        rows = stages.encode_rows(args.input, args.output, args.assets, args.config, rest, args.hash, cluster)
    else:
        titan = ["--job.config_file", str(args.config)] if args.config else []
        titan += rest
        titan += ["--training.dataset_path", str(args.dataset)] if args.dataset else []
        titan += ["--job.dump_folder", str(args.output)] if args.output else []
        if "--job.config_file" not in titan:
            parser.error("the train stage needs --config FILE (or --job.config_file FILE)")
        rows = stages.train_rows(titan, cluster, os.environ)
    print(render(rows))
    return 1 if failed(rows) else 0


def infer_stage(config: Path | None, rest: list[str]) -> str:
    """``train`` for a TorchTitan job config (it has a ``[job]`` or ``[model]`` table), else ``encode``."""
    if "--job.config_file" in rest:
        return "train"
    if config is None:
        return "encode"
    try:
        tables = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return "encode"  # Stage 1's config loader reports the problem in its row
    return "train" if {"job", "model"} & tables.keys() else "encode"


if __name__ == "__main__":
    sys.exit(main())
