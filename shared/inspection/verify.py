"""Re-read every store: checksums, schema, NaN/Inf, compact text's padding (``padding``), and value
statistics against the dataset's.

Checksums prove a store holds what its writer wrote; they cannot tell that the writer wrote zeros
or garbage. So each store's mean and standard deviation of every tensor array is compared with the
median over all stores: a store of zeros, or of an encoder run with the wrong weights, stands out.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from shared import contract, torch_storage
from shared.contract import Identity
from shared.inspection.padding import PaddingCheck
from shared.inspection.text_half import pairing_findings
from shared.progress import Finding, Summary, summarise
from shared.store import verify_store

MEAN_TOLERANCE = 0.5
"""A store's mean may differ from the stores' median mean by this many median standard deviations.
Stores of ~5,000 samples agree far more closely than this; a shifted or constant store does not."""

STD_RATIO = 2.0
"""A store's standard deviation may be at most this factor above or below the stores' median."""

MIN_STORES_FOR_STATISTICS = 3
"""Fewer stores give no meaningful median to compare against."""


@dataclass
class Moments:
    """Running count, mean and sum of squared deviations; blocks merge stably (Chan et al.)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: torch.Tensor) -> None:
        k = values.numel()
        if not k:
            return
        var, mean = (float(v) for v in torch.var_mean(values.float(), correction=0))
        delta, total = mean - self.mean, self.n + k
        self.mean += delta * k / total
        self.m2 += var * k + delta * delta * self.n * k / total
        self.n = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else math.nan


@dataclass
class StoreCheck:
    """What re-reading one store found, and its tensor statistics (array -> (mean, std))."""

    store: str
    samples: int
    problems: list[str]
    stats: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class VerifyResult:
    stores: int
    samples: int
    seconds: float
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not self.findings


def verify(
    dataset: str | os.PathLike,
    workers: int | None = None,
    summary: Summary | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyResult:
    """Re-read the whole dataset in a process pool; every finding says what is wrong and where.

    Stores the summary already rejects (another identity, unreadable attributes, misnamed) are
    reported, not re-read; missing expected stores are a finding too: a dataset passes only when it
    is whole and intact.
    """
    start = time.perf_counter()
    summary = summary or summarise(dataset)
    identity = Identity.from_dict(summary.identity)
    rejected = {f.where for f in summary.problems}
    paths = [p for p in contract.committed_store_paths(dataset) if p.name not in rejected]
    checks = _run_checks(paths, identity, workers, progress)
    findings = list(summary.problems)
    if summary.missing:
        findings.append(Finding("dataset", f"{len(summary.missing)} expected stores are missing ({summary.verdict})"))
    if identity.stores_text:
        findings += _empty_prompt_findings(Path(dataset), identity)
    else:  # the empty prompt, like all text, is the text dataset's
        findings += pairing_findings(dataset)
    findings += [Finding(c.store, p) for c in checks for p in c.problems]
    findings += statistics_outliers(checks)
    return VerifyResult(len(checks), sum(c.samples for c in checks), time.perf_counter() - start, findings)


def check_store(path: str | os.PathLike, identity: Identity) -> StoreCheck:
    """Verify one committed store and gather its tensor statistics in the same single read."""
    specs = contract.array_specs(identity)
    moments = {name: Moments() for name, spec in specs.items() if spec.is_tensor}
    rows = {name: 0 for name in specs}

    padding = PaddingCheck(identity)

    def on_block(name: str, block: np.ndarray) -> None:
        rows[name] += len(block)
        padding.add(name, block)
        if name in moments:
            moments[name].add(torch_storage.from_storage(block, identity.storage_dtype))

    problems = verify_store(path, identity, specs, on_block=on_block) + padding.problems()
    stats = {name: (m.mean, m.std) for name, m in moments.items() if m.n}
    return StoreCheck(Path(path).name, max(rows.values()), problems, stats)


def statistics_outliers(checks: list[StoreCheck]) -> list[Finding]:
    """Stores whose mean or spread of a tensor array is far from the median store's.

    Stores with other problems are left out: their statistics cover only what could be read.
    """
    checks = [c for c in checks if not c.problems]
    if len(checks) < MIN_STORES_FOR_STATISTICS:
        return []
    names = sorted({name for c in checks for name in c.stats})
    return [f for name in names for f in _array_outliers(name, checks)]


def _array_outliers(name: str, checks: list[StoreCheck]) -> list[Finding]:
    stats = {c.store: c.stats[name] for c in checks if name in c.stats and all(map(math.isfinite, c.stats[name]))}
    if len(stats) < MIN_STORES_FOR_STATISTICS:
        return []
    median_mean = statistics.median(m for m, _ in stats.values())
    median_std = statistics.median(s for _, s in stats.values())
    if median_std <= 0:
        return []
    return [
        Finding(
            store,
            f"{name}: values far from the dataset's: mean {mean:.4g}, std {std:.4g} "
            f"(median store: mean {median_mean:.4g}, std {median_std:.4g})",
        )
        for store, (mean, std) in stats.items()
        if abs(mean - median_mean) > MEAN_TOLERANCE * median_std or not 1 / STD_RATIO <= std / median_std <= STD_RATIO
    ]


def _run_checks(
    paths: list[Path], identity: Identity, workers: int | None, progress: Callable[[int, int], None] | None
) -> list[StoreCheck]:
    """``check_store`` over all paths, in worker processes unless ``workers`` is 1 (debugging)."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(paths) <= 1:
        return [_report(check_store(p, identity), i, len(paths), progress) for i, p in enumerate(paths)]
    # forkserver: workers start from a clean, single-threaded process (fork after torch's thread
    # pools have started can deadlock), and start fast because the server imports torch/zarr once.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["shared.inspection.verify"])
    with ProcessPoolExecutor(min(workers, len(paths)), mp_context=context, initializer=_one_thread) as pool:
        results = pool.map(check_store, paths, [identity] * len(paths))
        return [_report(c, i, len(paths), progress) for i, c in enumerate(results)]


def _report(check: StoreCheck, index: int, total: int, progress: Callable[[int, int], None] | None) -> StoreCheck:
    if progress is not None:
        progress(index + 1, total)
    return check


def _one_thread() -> None:
    """Parallelism comes from processes; one torch thread each keeps 2-core machines responsive."""
    torch.set_num_threads(1)


def _empty_prompt_findings(dataset: Path, identity: Identity) -> list[Finding]:
    path = dataset / contract.EMPTY_PROMPT_STORE
    if not path.is_dir():
        return [Finding(contract.EMPTY_PROMPT_STORE, "missing")]
    padding = PaddingCheck(identity)
    problems = verify_store(path, identity, contract.empty_prompt_specs(identity), on_block=padding.add)
    return [Finding(path.name, p) for p in problems + padding.problems()]
