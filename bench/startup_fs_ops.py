"""Filesystem operations each Stage 2 rank makes on the dataset before its first step, at CC12M's 2,176 stores.

    python -m bench.startup_fs_ops [--stores 2176] [--world-size 2] [--keep DIR]

Builds a complete dataset of ``--stores`` tiny stores named like CC12M's, with 128 done heartbeats (as
``bench.inspect_summary`` does; a valid dataset flux-tiny trains on), then starts the real trainer with
torchrun (gloo, ``--training.steps 0``: everything up to the first step, nothing of it) under
``bench.fs_audit``, and prints one JSON line per rank: ``store_metadata_opens`` (each store's
``zarr.json``), beside every open and directory listing under the dataset. Stat calls are not counted.
Tiny arrays: what is counted does not depend on their size.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from bench.common import REPO, emit, work_dir
from bench.inspect_summary import build
from shared import contract
from shared.contract import Identity

CONFIG = REPO / "configs" / "flux_tiny.toml"


def flux_tiny_identity() -> Identity:
    """An identity configs/flux_tiny.toml trains on (tiny arrays: the count does not depend on them)."""
    from stage2_train.model.flavors import FLAVORS

    return Identity(
        t5_max_length=256, t5_dim=32, clip_dim=32, image_size=256,
        ae_params=dataclasses.asdict(FLAVORS["flux-tiny"].autoencoder_params),
        storage_dtype="float32", encoders={}, preprocessing={}, code_version="bench",
    )


def count_startup(dataset: Path, work: Path, world_size: int) -> list[dict[str, int]]:
    """Per rank: opens and listings under ``dataset`` from process start to the first step."""
    logs = work / "fs_logs"
    logs.mkdir(parents=True)
    command = [
        str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc_per_node={world_size}",
        "-m", "bench.fs_audit", str(logs), str(dataset), "stage2_train",
        "--job.config_file", str(CONFIG), "--training.dataset_path", str(dataset), "--job.dump_folder", str(work / "dump"),
        "--training.steps", "0", "--training.dataloader.num_workers", "0", "--metrics.no-enable-tensorboard",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the trainer failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return [classify(logs / f"rank{rank}.log", dataset) for rank in range(world_size)]


def classify(log: Path, dataset: Path) -> dict[str, int]:
    """Counts of one rank's logged events by kind."""
    shards = contract.shards_dir(dataset.resolve())
    counts: collections.Counter[str] = collections.Counter()
    for line in log.read_text().splitlines() if log.exists() else []:
        _, event, path = line.split(" ", 2)
        where = Path(path)
        if event != "open":
            counts["listings"] += 1
        elif where.parent.parent == shards and where.name == "zarr.json":
            counts["store_metadata_opens"] += 1
        elif shards in where.parents:
            counts["other_store_file_opens"] += 1
        else:
            counts["dataset_file_opens"] += 1  # dataset.json, the empty prompt, heartbeats
    return {kind: counts[kind] for kind in ("store_metadata_opens", "other_store_file_opens", "dataset_file_opens", "listings")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", type=int, default=2176)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="build the dataset and logs here and keep them")
    args = parser.parse_args()
    with work_dir(args.keep, "startup-bench-") as work:
        dataset = work / "ds"
        build(dataset, args.stores, tasks=128, identity=flux_tiny_identity())
        for rank, counts in enumerate(count_startup(dataset, work, args.world_size)):
            emit("startup_fs_ops", "store_metadata_opens", counts.pop("store_metadata_opens"), "opens", rank=rank,
                 world_size=args.world_size, stores=args.stores, **counts)  # fmt: skip


if __name__ == "__main__":
    main()
