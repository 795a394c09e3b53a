"""What the planner derives from a measured step: the batch that fits, bytes on the wire, checkpoint
size, the dataset read rate and a roofline samples/s — each from stated assumptions (``Assumptions``),
printed with the plan so a reader can redo the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from shared import contract

GIB = 2**30
GPUS = {"h100": 79.18, "h100-80gb": 79.18, "h200": 140.4, "h200-141gb": 140.4}
"""GPU name -> memory in GiB as ``torch.cuda.get_device_properties().total_memory`` reports it
(H100 80 GB SXM: 85,017,198,592 bytes; H200 141 GB: 150,754,820,096 bytes)."""
HEADROOM = 0.05
"""Share of the GPU kept free: CUDA context, NCCL buffers and workspaces the step does not allocate."""
FRAGMENTATION_GIB = 1.0
"""Caching-allocator margin: reserved minus active peaked at 1.04 GiB in our single-GPU runs
(bench/results/stage2_train_h200*.jsonl)."""
RECOMPUTE = {"none": 1.0, "full": 4 / 3}
"""FLOPs of a step relative to no AC: a checkpointed block runs its forward (a third of its training
FLOPs) twice. Selective every n-th block: 1 + 1/(3n)."""
STORED_BYTES_PER_SAMPLE = {256: 1.27e6, 512: 1.27e6 + 177e3}
"""Bytes read per sample (measured, README): a 256 px store 1.27 MB; at 512 px the image store
(--text-from, 177 kB) plus its 256 px text dataset's store (counted whole: an upper bound)."""


@dataclass(frozen=True)
class Assumptions:
    """The roofline's inputs, printed with every plan."""

    peak_tflops: float = 989.0
    """bf16 dense peak of an H100/H200 SXM (TorchTitan's figure for both)."""
    mfu: float = 0.499
    """MFU we measured on one H200: 8 + 16 blocks, bf16, blocks compiled, no AC, batch 32
    (bench/results/stage2_train_h200.jsonl, bf16.mfu 49.85 %)."""
    nvlink_gbps: float = 360.0
    """Intra-node bus bandwidth per GPU for all-gather / reduce-scatter, GB/s (NCCL busbw, H100 x 8)."""
    network_gbps: float = 50.0
    """Inter-node bandwidth per node, GB/s (400 Gb/s)."""


def usable_bytes(gpu_gib: float) -> float:
    """Bytes a step may peak at on a GPU of ``gpu_gib``: ``HEADROOM`` and ``FRAGMENTATION_GIB`` kept free."""
    return gpu_gib * (1 - HEADROOM) * GIB - FRAGMENTATION_GIB * GIB


def gpu_gib(name_or_gib: str) -> float:
    """``h100``, ``h200-141gb``, … or a number of GiB."""
    if name_or_gib.lower() in GPUS:
        return GPUS[name_or_gib.lower()]
    try:
        return float(name_or_gib)
    except ValueError:
        raise ValueError(f"unknown GPU {name_or_gib!r}: give GiB or one of {', '.join(GPUS)}") from None


@dataclass(frozen=True)
class PeakEnvelope:
    """A step's peak bytes as a function of the local batch: the upper envelope of ``lines`` (a, b),
    peak(batch) = max over lines of a + b * batch.

    Why not one line through two probes: the peak is the largest of the live totals over the step's
    moments, each linear in the batch (activations scale with it, parameters and optimizer state do
    not), so it is convex piecewise linear. At a small batch the peak sits late in backward, where
    gradients and optimizer state dominate; at a large one early in backward, where activations do —
    a line through two small probes undershoots (flux-schnell, selective AC: 1.28 GiB per sample
    from batches 2 and 4, 2.3 at batch 40). Two probe steps run the same ops in the same order
    (``MemoryTimeline`` disables the cyclic garbage collector), so moment t gives a_t and b_t
    exactly; only the lines that are the maximum for some batch >= 1 are kept."""

    lines: tuple[tuple[float, float], ...]

    @classmethod
    def through(cls, b1: int, series1: list[int], b2: int, series2: list[int]) -> PeakEnvelope:
        if len(series1) != len(series2):
            raise ValueError(f"probe steps at batch {b1} and {b2} differ in their memory events: cannot solve per moment")
        best: dict[float, float] = {}
        for l1, l2 in zip(series1, series2):
            b = (l2 - l1) / (b2 - b1)
            a = l1 - b * b1
            best[b] = max(best.get(b, a), a)
        return cls(upper_envelope(best))

    def at(self, batch: int) -> float:
        return max(a + b * batch for a, b in self.lines)

    def largest_batch(self, usable: float, cap: int) -> int:
        """The largest local batch up to ``cap`` whose peak fits ``usable`` bytes (0: not even one sample)."""
        limits = [math.floor((usable - a) / b) if b > 0 else (cap if a + b <= usable else 0) for a, b in self.lines]
        return max(0, min(cap, *limits))


def upper_envelope(best: dict[float, float]) -> tuple[tuple[float, float], ...]:
    """Lines (a, b) from slope -> highest intercept that are the maximum for some batch >= 1."""
    hull: list[tuple[float, float]] = []
    for b, a in sorted(best.items()):
        while hull and hull[-1][0] + hull[-1][1] <= a + b:  # at batch 1 already no higher, and flatter
            hull.pop()
        while len(hull) >= 2:
            (a1, b1), (a2, b2) = hull[-2], hull[-1]
            # hull[-1] is never the maximum if the new line overtakes hull[-2] no later than hull[-1] does.
            if (a1 - a) * (b2 - b1) <= (a1 - a2) * (b - b1):
                hull.pop()
            else:
                break
        hull.append((a, b))
    return tuple(hull)


def recompute_factor(mode: str, every: int | None) -> float:
    if mode == "selective" and every:
        return 1 + 1 / (3 * every)
    return RECOMPUTE[mode]


@dataclass(frozen=True)
class Wire:
    """Bytes one rank moves per step and the time they take at the assumed bandwidths."""

    all_gather_bytes: int
    reduce_scatter_bytes: int
    all_reduce_bytes: int
    nvlink_s: float
    network_s: float


def wire(collectives: dict[str, int], shard: int, replicate: int, gpus_per_node: int, a: Assumptions) -> Wire:
    """Ring-algorithm bus bytes: an all-gather or reduce-scatter over ``shard`` ranks moves (n-1)/n of
    its full buffer per rank over NVLink; the all-reduce over ``replicate`` nodes 2(n-1)/n of its
    buffer per rank, and a node's ``gpus_per_node`` ranks share the node's network."""
    gather, scatter, reduce = (collectives.get(k, 0) for k in ("all_gather", "reduce_scatter", "all_reduce"))
    intra = (gather + scatter) * (shard - 1) / shard
    inter = reduce * 2 * (replicate - 1) / replicate * gpus_per_node
    return Wire(gather, scatter, reduce, intra / (a.nvlink_gbps * 1e9), inter / (a.network_gbps * 1e9))


def samples_per_s_per_gpu(batch: int, flops_per_sample: int, recompute: float, comm: Wire, a: Assumptions) -> float:
    """Roofline: compute at ``a.mfu`` of peak, communication overlapped with it; what exceeds it is exposed."""
    compute = batch * flops_per_sample * recompute / (a.peak_tflops * 1e12 * a.mfu)
    step = compute + max(0.0, comm.nvlink_s - compute) + max(0.0, comm.network_s - compute)
    return batch / step


def checkpoint_bytes(nparams: int) -> dict[str, int]:
    """A TorchTitan checkpoint: fp32 weights and AdamW's two fp32 moments (the step counters are scalars);
    replicas hold the same shards and are saved once. Model only: the fp32 weights."""
    return {"full": 12 * nparams, "model_only": 4 * nparams}


def stored_bytes_per_sample(image_size: int, dataset: str = "") -> tuple[float, str]:
    """Bytes read per sample and where the figure comes from: a dataset's committed stores when given
    (their files' bytes over their samples), else the measured figure for ``image_size``."""
    if dataset:
        stores = contract.committed_store_paths(dataset)
        samples = sum(contract.read_store_attrs(s).num_samples for s in stores)
        files = sum(f.stat().st_size for s in stores for f in Path(s).rglob("*") if f.is_file())
        if samples:
            return files / samples, f"{dataset}: {len(stores)} stores, {samples} samples"
    if image_size not in STORED_BYTES_PER_SAMPLE:
        raw = 2 * (256 * 4096 + 768 + 2 * 16 * (image_size // 8) ** 2)
        return raw, f"contract's raw bf16 bytes at {image_size} px (no measured figure)"
    return STORED_BYTES_PER_SAMPLE[image_size], f"measured at {image_size} px (README)"


def assumptions_dict(a: Assumptions) -> dict[str, float]:
    return {**asdict(a), "headroom_share": HEADROOM, "fragmentation_gib": FRAGMENTATION_GIB}
