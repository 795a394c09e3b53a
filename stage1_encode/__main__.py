"""Encode CC12M-format WebDataset tars into a Stage 1 dataset (one task of an array job, or all of it).

    python -m stage1_encode --input DIR_OR_GLOB_OR_URL --output DATASET --assets ASSETS \\
        [--config configs/encode_cc12m.toml] [--section.key value …] [--task-index I --num-tasks N]
        [--text-from TEXT_DATASET]

Task I of N encodes tars I, I+N, I+2N, … of the sorted input; a rerun skips committed stores whose
source tar is unchanged and encodes again those whose tar changed (size and a hash of both ends).

Exit status: 0 done; 1 an error (named on stderr); 3 done, but a source tar broke off (each is named
with where it was cut; its store keeps the whole samples before the cut); 4 done, but the task kept
under half of the samples it read (the skip reasons and the fix are named; its stores are committed);
143 terminated (rerun).
--text-from (the resolution ladder, e.g. with --image.size 512): encode the images only and pair each
sample by key with TEXT_DATASET's T5/CLIP encodings of the same tars; T5 and CLIP are not loaded.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from transformers.utils.logging import disable_progress_bar

from shared.kept_share import few_kept
from stage1_encode.asset_loading import AssetsError
from stage1_encode.config import ConfigError, EncodeConfig, load_config, parse_overrides
from stage1_encode.errors import Stage1Error
from stage1_encode.pipeline import Task, run_task
from stage1_encode.sources import SourcesError

DAMAGED_SOURCES_EXIT = 3
FEW_KEPT_EXIT = 4


class Terminated(BaseException):
    """SIGTERM (scancel, preemption, requeue): unwind so the temporary store is removed."""


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, EncodeConfig]:
    parser = argparse.ArgumentParser(
        prog="python -m stage1_encode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any config key can be overridden as --section.key value (e.g. --batch.size 128).",
    )
    parser.add_argument(
        "--input", required=True, help="directory of *.tar, a glob, or a URL: hf://datasets/pixparse/cc12m-wds streams"
    )
    parser.add_argument("--output", required=True, type=Path, help="dataset directory")
    parser.add_argument("--assets", required=True, type=Path, help="FLUX.1-schnell assets directory")
    parser.add_argument("--config", type=Path, help="TOML config (default: built-in production settings)")
    parser.add_argument(
        "--task-index", type=int, default=0, metavar="I",
        help="this task's index, 0..N-1 (the sbatch script passes SLURM_ARRAY_TASK_ID; default 0)",
    )
    parser.add_argument(
        "--num-tasks", type=int, default=1, metavar="N",
        help="tasks sharing the input: task I encodes tars I, I+N, I+2N, … (the array's size; default 1)",
    )
    parser.add_argument(
        "--allow-damaged-sources", action="store_true",
        help="exit 0 even when a source tar broke off (default: exit 3, so the job shows FAILED and the tar "
        "gets replaced; its store is committed either way)",
    )
    parser.add_argument("--text-from", type=Path, help="a dataset of the same tars to take the text encodings from")
    args, rest = parser.parse_known_args(argv)
    try:
        config = load_config(args.config, parse_overrides(rest))
    except ConfigError as exc:
        parser.error(str(exc))
    return args, config


def main(argv: list[str] | None = None) -> int:
    args, config = parse_args(sys.argv[1:] if argv is None else argv)
    disable_progress_bar()  # a task log has our progress lines; tqdm bars (sharded T5-XXL) are noise in it

    def terminate(signum: int, _frame: object) -> None:
        raise Terminated(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    # Past RLIMIT_FSIZE the kernel would kill us with SIGXFSZ; ignored, a write fails with EFBIG instead
    # and is reported like a full disk.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    task = Task(args.input, args.output, args.assets, args.task_index, args.num_tasks, args.text_from)
    try:
        result = run_task(config, task)
    except (AssetsError, SourcesError, Stage1Error) as exc:
        print(f"stage1_encode: error: {exc}", file=sys.stderr)
        return 1
    except Terminated as exc:
        print(f"stage1_encode: {exc}; the store being written was discarded, rerun to resume", file=sys.stderr)
        return 143
    few = few_kept(result.samples, result.skipped, config.image.size)
    if few:
        print(f"stage1_encode: {few}; exit status {FEW_KEPT_EXIT}", file=sys.stderr)
        return FEW_KEPT_EXIT
    if result.damaged_sources and not args.allow_damaged_sources:
        print(
            f"stage1_encode: {len(result.damaged_sources)} damaged source(s), named above; exit status 3 "
            f"(--allow-damaged-sources accepts them)", file=sys.stderr,
        )
        return DAMAGED_SOURCES_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
