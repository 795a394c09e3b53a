"""How long ``python -m shared.inspect_shards DATASET`` (the summary) takes on a 2,000-store dataset.

The summary must answer in seconds for CC12M's 2,176 stores; it reads one ``zarr.json`` per store
and one heartbeat per task, so array sizes do not matter: a few real tiny stores are written through
the contract, then hard-linked under 2,000 names with their ``source`` attribute rewritten (a commit
rewrites ``zarr.json`` to a new file, so the templates stay intact).

    python -m bench.inspect_summary [--stores 2000] [--tasks 128] [--keep DIR]

Prints one JSON line: the median wall time of the command (a fresh interpreter each run, as a
person runs it) over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zarr
from torchtitan.models.flux.model.autoencoder import AutoEncoderParams

from bench.common import REPO, emit
from fixtures.synthetic import write_synthetic_dataset
from shared import contract, heartbeat
from shared.contract import Identity
from shared.heartbeat import Heartbeat

TEMPLATES = 4


def tiny_identity() -> Identity:
    ae = AutoEncoderParams(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1)
    return Identity(
        t5_max_length=8, t5_dim=16, clip_dim=8, image_size=64, ae_params=dataclasses.asdict(ae),
        storage_dtype="bfloat16", encoders={}, preprocessing={}, code_version="bench",
    )


def build(out: Path, stores: int, tasks: int) -> None:
    """A complete dataset of ``stores`` stores named like CC12M's, with ``tasks`` done heartbeats."""
    write_synthetic_dataset(out, tiny_identity(), TEMPLATES, samples_per_store=8, samples_per_shard=4)
    templates = contract.committed_store_paths(out)
    names = [f"cc12m-train-{i:04d}" for i in range(stores)]
    for i, name in enumerate(names):
        clone = contract.shards_dir(out) / contract.store_name(f"{name}.tar")
        shutil.copytree(templates[i % TEMPLATES], clone, copy_function=_link)
        zarr.open_group(clone, mode="r+").attrs.update({"source": f"{name}.tar"})
    for template in templates:
        shutil.rmtree(template)
    now = time.time()
    for i in range(tasks):
        sources = [contract.store_name(f"{n}.tar") for n in names[i::tasks]]
        heartbeat.write_heartbeat(out, Heartbeat(
            task_index=i, num_tasks=tasks, sources=sources, state="done", started_at=now - 3600, updated_at=now,
            stores_done=len(sources), samples_done=8 * len(sources), samples_per_second=180.0,
        ))


def time_summary(dataset: Path, repeats: int) -> tuple[float, str]:
    """Median seconds of the summary command, and its first output line (the verdict)."""
    seconds, headline = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "shared.inspect_shards", str(dataset)], cwd=REPO, capture_output=True, text=True, check=True
        )
        seconds.append(time.perf_counter() - start)
        headline = done.stdout.splitlines()[0]
    return statistics.median(seconds), headline


def _link(src: str, dst: str) -> None:
    Path(dst).hardlink_to(src)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="build the dataset here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="inspect-bench-"))
    try:
        dataset = root / "ds"
        build(dataset, args.stores, args.tasks)
        seconds, headline = time_summary(dataset, args.repeats)
        emit("inspect_summary", "summary_seconds", round(seconds, 3), "s", stores=args.stores, tasks=args.tasks,
             repeats=args.repeats, headline=headline)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
