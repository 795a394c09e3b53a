"""The Stage 2 loader's ceiling: what one DataLoader worker costs per sample, and what N workers deliver.

    python -m bench.stage2_loader [--workers 1,2] [--batch 8] [--batches 60] [--repeats 3] [--keep DIR]

Writes a synthetic dataset at FLUX.1-schnell's real 256-px shapes through Stage 1's writer (T5 [256, 4096],
CLIP [768], AE moments [16, 32, 32], bf16, blosc-zstd + CRC32C per chunk) and reads it with the
production loader (``build_precomputed_dataloader`` under configs/flux_schnell.toml: the store reader
with its CRC checks and decompression, conversion to tensors, collate, TorchTitan's loader). Figures,
one JSON line each:

* ``cpu_ms_per_sample``: CPU time of exactly a worker's work (``dataset[i]`` for a batch's indices, then
  ``collate``) in this process, after the first batch. CPU time, so another job on the same cores does
  not change it much: ``1000 / value`` is what one worker does with a core to itself.
* ``samples_per_s`` per worker count: batches through the real loader after the first (which starts
  the workers), the median of ``--repeats`` runs; wall time, so it shows a busy machine.

What neither sees: a parallel filesystem's latency (the stores come from the page cache after the
first pass) and real T5 activations, which compress less than random values (the stored bytes per
sample are in each line).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from pathlib import Path

from bench.common import REPO, emit, work_dir
from fixtures.synthetic import schnell_identity, write_synthetic_dataset
from shared import contract
from stage2_train.data.dataset import collate
from stage2_train.data.elastic_loader import ElasticDataloader
from stage2_train.data.loader import build_precomputed_dataloader

CONFIG = REPO / "configs" / "flux_schnell.toml"


def production_loader(dataset: Path, workers: int, batch: int) -> ElasticDataloader:
    """The loader ``python -m stage2_train`` builds from configs/flux_schnell.toml for one data-parallel rank."""
    from torchtitan.config import ConfigManager

    config = ConfigManager().parse_args([
        "--job.config_file", str(CONFIG), "--training.dataset_path", str(dataset),
        "--training.local_batch_size", str(batch), "--training.dataloader.num_workers", str(workers),
    ])  # fmt: skip
    return build_precomputed_dataloader(1, 0, config)


def cpu_ms_per_sample(dataset: Path, batch: int, batches: int) -> float:
    """A worker's CPU time per sample: its reads and collate, run here on the loader's own dataset and batches."""
    loader = production_loader(dataset, 1, batch)  # never iterated: no worker starts
    indices = iter(loader.batch_sampler)
    collate([loader.dataset[i] for i in next(indices)])  # the first batch opens its stores
    start = time.process_time()
    for batch_indices in itertools.islice(indices, batches):
        collate([loader.dataset[i] for i in batch_indices])
    return (time.process_time() - start) * 1000 / (batches * batch)


def samples_per_second(dataset: Path, workers: int, batch: int, batches: int) -> float:
    """The production loader's rate over ``batches`` batches after the first (which starts the workers)."""
    loader = iter(production_loader(dataset, workers, batch))
    next(loader)
    start = time.perf_counter()
    for _ in itertools.islice(loader, batches):
        pass
    return batches * batch / (time.perf_counter() - start)


def stored_bytes_per_sample(dataset: Path) -> float:
    attrs = [contract.read_store_attrs(path) for path in contract.committed_store_paths(dataset)]
    return sum(a.stored_bytes for a in attrs) / sum(a.num_samples for a in attrs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (1 or more) to time")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=60, help="measured batches per figure and run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per worker count (the median is kept)")
    parser.add_argument("--stores", type=int, default=4)
    parser.add_argument("--samples-per-store", type=int, default=64)
    parser.add_argument("--keep", type=Path, help="write the dataset here and keep it (reused when there)")
    args = parser.parse_args()
    with work_dir(args.keep, "loader-bench-") as work:
        dataset = write_synthetic_dataset(work / "ds", schnell_identity(), args.stores, args.samples_per_store)
        common = {"batch": args.batch, "batches": args.batches, "stored_bytes_per_sample": round(stored_bytes_per_sample(dataset)),
                  "cpu_cores": os.cpu_count()}  # fmt: skip
        cpu_ms = cpu_ms_per_sample(dataset, args.batch, args.batches)
        emit("stage2_loader", "cpu_ms_per_sample", round(cpu_ms, 2), "ms", samples_per_s_per_core=round(1000 / cpu_ms, 1), **common)
        for workers in (int(w) for w in args.workers.split(",")):
            rates = [samples_per_second(dataset, workers, args.batch, args.batches) for _ in range(args.repeats)]
            rate = statistics.median(rates)
            emit("stage2_loader", "samples_per_s", round(rate, 1), "samples/s", workers=workers, per_worker=round(rate / workers, 1),
                 runs=[round(r, 1) for r in rates], **common)  # fmt: skip


if __name__ == "__main__":
    main()
