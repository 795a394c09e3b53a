"""What a dataset holds and how far Stage 1 got, from per-store attributes and heartbeats only.

Never opens an array: one small ``zarr.json`` per store, so thousands of stores answer in about a
second. Whether the bytes behind those attributes are intact is ``verify``'s job.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from shared import contract, heartbeat
from shared.contract import StoreAttrs
from shared.heartbeat import Heartbeat

STALE_AFTER_S = 600.0
LIVE_STATES = ("starting", "running")
"""A task loading its encoders (``starting``) or encoding."""
"""A ``running`` heartbeat older than this is stale (task killed, node dead). Heartbeats come every
few seconds, but loading T5-XXL from a parallel filesystem at start can take minutes."""

ATTR_READ_THREADS = 16
"""Concurrent ``zarr.json`` reads: on a parallel filesystem each open is a server round trip."""


@dataclass(frozen=True)
class Finding:
    """One thing wrong (naming the array where there is one), and where: a store's name or ``dataset``."""

    where: str
    what: str


@dataclass
class TaskStatus:
    """One Stage 1 array task as its heartbeat tells it, judged against what is committed."""

    index: int
    state: str
    """``starting`` (loading encoders), ``running``, ``done``, ``stale`` (starting or running, but silent for
    too long) or ``failed``."""
    heartbeat_age_s: float
    sources: int
    remaining: int
    """Sources of this task without a committed store."""
    samples_done: int
    samples_per_second: float
    eta_s: float | None
    current_source: str | None
    host: str
    slurm_job: str | None
    message: str


@dataclass
class DamagedSource:
    """A committed store whose source tar broke off: it holds the whole samples before the cut."""

    store: str
    source: str
    cut_at_byte: int
    samples_read: int
    samples_unread: int | None
    """Estimate: the median samples read from whole tars minus this one's (None: no whole tar)."""

    @property
    def tar_name(self) -> str:
        return self.source.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class Temporary:
    """A hidden ``.<store>.tmp-*`` directory: a store being written, or one a killed task left."""

    name: str
    store: str
    age_s: float
    status: str


@dataclass
class Summary:
    dataset: str
    verdict: str
    """``COMPLETE``, ``IN PROGRESS``, ``INCOMPLETE``, ``UNKNOWN EXTENT`` (no heartbeats) or ``INVALID``."""
    identity: dict[str, Any]
    identity_digest: str
    assets_dir: str | None
    stores_committed: int
    stores_expected: int | None
    """Union of the heartbeats' sources; ``None`` when no task has reported."""
    missing: list[str]
    unexpected: list[str]
    """Committed stores that no heartbeat names (an earlier run's, or heartbeats were removed)."""
    samples: int
    samples_per_store: tuple[int, int, int] | None
    """(min, median, max) over committed stores."""
    skipped: dict[str, int]
    stored_bytes: int
    raw_bytes: int
    arrays: list[dict[str, Any]]
    tasks_expected: int | None
    """``num_tasks`` of the array job as the heartbeats state it."""
    tasks: list[TaskStatus]
    rate_samples_per_s: float
    eta_s: float | None
    temporaries: list[Temporary]
    problems: list[Finding] = field(default_factory=list)
    """Stores that must not be trusted: unreadable attributes, another identity, misnamed."""
    damaged: list[DamagedSource] = field(default_factory=list)

    @property
    def live_tasks(self) -> list[TaskStatus]:
        return [t for t in self.tasks if t.state in LIVE_STATES]

    @property
    def tasks_unreported(self) -> int:
        return (self.tasks_expected or 0) - len(self.tasks)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summarise(dataset: str | os.PathLike, now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> Summary:
    """Summarise ``dataset`` from ``dataset.json``, store attributes, temporaries and heartbeats.

    Raises ``ContractError`` when the directory is not a dataset of the supported schema.
    """
    now = time.time() if now is None else now
    meta = contract.read_dataset_json(dataset)
    identity = contract.read_identity(dataset)
    digest = identity.digest()
    attrs, problems = read_committed(dataset, digest)
    heartbeats = heartbeat.read_heartbeats(dataset)
    num_tasks = max((t.num_tasks for t in heartbeats), default=None)
    expected = {s for t in heartbeats for s in t.sources}
    samples = sum(a.num_samples for a in attrs.values())
    per_store = samples / len(attrs) if attrs else None
    tasks = [_task_status(t, set(attrs), now, stale_after_s, per_store) for t in heartbeats]
    live = [t for t in tasks if t.state in LIVE_STATES]
    counts = sorted(a.num_samples for a in attrs.values())
    summary = Summary(
        dataset=str(dataset),
        verdict="",
        identity=identity.to_dict(),
        identity_digest=digest,
        assets_dir=meta.get(contract.ASSETS_DIR_KEY),
        stores_committed=len(attrs),
        stores_expected=len(expected) if heartbeats else None,
        missing=sorted(expected - set(attrs)),
        unexpected=sorted(set(attrs) - expected) if heartbeats else [],
        samples=samples,
        samples_per_store=(counts[0], int(statistics.median(counts)), counts[-1]) if counts else None,
        skipped=_sum_counts(a.skipped for a in attrs.values()),
        stored_bytes=sum(a.stored_bytes for a in attrs.values()),
        raw_bytes=sum(a.raw_bytes for a in attrs.values()),
        arrays=[_array_row(spec) for spec in contract.array_specs(identity).values()],
        tasks_expected=num_tasks,
        tasks=tasks,
        rate_samples_per_s=sum(t.samples_per_second for t in live),
        eta_s=_overall_eta(live, len(heartbeats), num_tasks or 0),
        temporaries=[_temporary(p, set(attrs), heartbeats, tasks, now) for p in contract.temporary_store_paths(dataset)],
        problems=problems,
        damaged=damaged_sources(attrs),
    )
    summary.verdict = _verdict(summary)
    return summary


def read_committed(dataset: str | os.PathLike, digest: str) -> tuple[dict[str, StoreAttrs], list[Finding]]:
    """Attributes of the committed stores that belong to this dataset, and findings for the others."""
    paths = contract.committed_store_paths(dataset)
    with ThreadPoolExecutor(ATTR_READ_THREADS) as pool:
        results = list(pool.map(_read_attrs, paths))
    good: dict[str, StoreAttrs] = {}
    problems: list[Finding] = []
    for path, result in zip(paths, results):
        found = [Finding(path.name, result)] if isinstance(result, str) else _attr_findings(path.name, result, digest)
        problems += found
        if not found:
            good[path.name] = result
    return good, problems


def damaged_sources(attrs: dict[str, StoreAttrs]) -> list[DamagedSource]:
    """Stores whose source broke off, with an estimate of the samples never read."""
    whole = [a.samples_read for a in attrs.values() if a.truncated_at_byte is None]
    typical = int(statistics.median(whole)) if whole else None
    return [
        DamagedSource(
            name, a.source, a.truncated_at_byte, a.samples_read,
            max(typical - a.samples_read, 0) if typical is not None else None,
        )
        for name, a in attrs.items()
        if a.truncated_at_byte is not None
    ]


def _read_attrs(path: Path) -> StoreAttrs | str:
    """A store's attributes, or why they cannot be read (a half-copied store, another schema)."""
    try:
        return contract.read_store_attrs(path)
    except Exception as exc:
        return f"unreadable store attributes ({type(exc).__name__}: {exc})"


def _attr_findings(name: str, attrs: StoreAttrs, digest: str) -> list[Finding]:
    found = []
    if attrs.identity_digest != digest:
        found.append(Finding(name, f"made with another identity ({attrs.identity_digest}, dataset is {digest})"))
    if contract.store_name(attrs.source) != name:
        found.append(Finding(name, f"holds {attrs.source!r}, whose store would be {contract.store_name(attrs.source)}"))
    return found


def _task_status(
    task: Heartbeat, committed: set[str], now: float, stale_after_s: float, samples_per_store: float | None
) -> TaskStatus:
    age = now - task.updated_at
    state = "stale" if task.state in LIVE_STATES and age > stale_after_s else task.state
    remaining = len(set(task.sources) - committed)
    return TaskStatus(
        index=task.task_index,
        state=state,
        heartbeat_age_s=age,
        sources=len(task.sources),
        remaining=remaining,
        samples_done=task.samples_done,
        samples_per_second=task.samples_per_second,
        eta_s=_task_eta(task, remaining, samples_per_store) if state == "running" else None,
        current_source=task.current_source,
        host=task.host,
        slurm_job=task.slurm_job,
        message=task.message,
    )


def _task_eta(task: Heartbeat, remaining: int, samples_per_store: float | None) -> float | None:
    """Seconds until a live task has written its remaining stores, at its own recent rate."""
    if remaining == 0:
        return 0.0
    if task.samples_per_second > 0 and samples_per_store:
        return remaining * samples_per_store / task.samples_per_second
    if task.stores_done:
        return remaining * (task.updated_at - task.started_at) / task.stores_done
    return None


def _overall_eta(live: list[TaskStatus], reported: int, num_tasks: int) -> float | None:
    """The slowest live task's ETA (tasks run side by side); unknown while tasks have not started."""
    if not live or reported < num_tasks or any(t.eta_s is None for t in live):
        return None
    return max(t.eta_s for t in live)


def _temporary(
    path: Path, committed: set[str], heartbeats: list[Heartbeat], tasks: list[TaskStatus], now: float
) -> Temporary:
    store = contract.final_name_of_temporary(path.name)
    age = now - path.stat().st_mtime
    owner = next((s for t, s in zip(heartbeats, tasks) if store in t.sources), None)
    if store in committed:
        status = "left over: the store is committed (a rerun removes it)"
    elif owner is None:
        status = "being written, or abandoned: no heartbeat names its source"
    elif owner.state == "running":
        status = f"being written by task {owner.index}"
    else:
        status = f"abandoned: task {owner.index} is {owner.state} (a rerun removes it)"
    return Temporary(path.name, store, age, status)


def _verdict(s: Summary) -> str:
    if s.problems:
        return "INVALID"
    if s.live_tasks:
        return "IN PROGRESS"
    if s.stores_expected is None:
        return "UNKNOWN EXTENT"
    if s.missing or s.tasks_unreported:
        return "INCOMPLETE"
    return "COMPLETE"


def _sum_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    """Skip counts by reason over all stores, most frequent first."""
    total: dict[str, int] = {}
    for c in counts:
        for reason, n in c.items():
            total[reason] = total.get(reason, 0) + n
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def _array_row(spec: contract.ArraySpec) -> dict[str, Any]:
    return {**dataclasses.asdict(spec), "doc": contract.ARRAY_DOCS.get(spec.name, "")}
