"""Heartbeats of the encoding tasks: ``progress/task-<i>.json`` in a dataset, rewritten atomically by each
task while it runs and read by ``inspect_shards`` to tell running, finished and stale tasks apart."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import contract
from shared.atomic import atomic_write


@dataclass
class Heartbeat:
    """One encoding task's state, rewritten atomically every few seconds and at the end.

    The union of every task's ``sources`` is the set of stores a finished dataset must hold; a
    ``running`` task whose ``updated_at`` is old is stale (killed, or its node died).
    """

    task_index: int
    num_tasks: int
    sources: list[str]
    """Store names this task is responsible for."""
    state: str
    """``running``, ``done`` or ``failed``."""
    started_at: float
    updated_at: float
    stores_done: int = 0
    samples_done: int = 0
    samples_per_second: float = 0.0
    current_source: str | None = None
    host: str = ""
    slurm_job: str | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Heartbeat:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def heartbeat_path(dataset: str | os.PathLike, task_index: int) -> Path:
    return Path(dataset) / contract.PROGRESS_DIR / f"task-{task_index:05d}.json"


def write_heartbeat(dataset: str | os.PathLike, heartbeat: Heartbeat) -> None:
    """Atomically replace a task's heartbeat file."""
    path = heartbeat_path(dataset, heartbeat.task_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(heartbeat.to_dict(), sort_keys=True))


def read_heartbeats(dataset: str | os.PathLike) -> list[Heartbeat]:
    root = Path(dataset) / contract.PROGRESS_DIR
    if not root.is_dir():
        return []
    return [Heartbeat.from_dict(json.loads(p.read_text())) for p in sorted(root.glob("task-*.json"))]
