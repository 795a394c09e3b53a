"""Which input tars a task encodes: a sorted list, task ``i`` of ``N`` takes tars i, i+N, i+2N, …

Derived from the input alone, so array tasks never coordinate and any array size covers every tar once.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from pathlib import Path

from shared import contract
from shared.tasks import TaskSliceError, task_slice

TAR_SUFFIXES = (".tar",)


class SourcesError(TaskSliceError):
    """The input names no tars, or the task index does not fit the task count."""


def list_tars(input_spec: str | os.PathLike) -> list[Path]:
    """All tars of a directory (not recursive) or matched by a glob, sorted by name then path."""
    spec = str(input_spec)
    if os.path.isdir(spec):
        paths = [p for p in Path(spec).iterdir() if p.is_file() and p.name.endswith(TAR_SUFFIXES)]
    else:
        paths = [Path(p) for p in glob.glob(spec) if os.path.isfile(p)]
    if not paths:
        raise SourcesError(f"--input {spec}: no input tars found (a directory of *.tar or a glob)")
    return sorted(paths, key=lambda p: (p.name, str(p)))


def task_tars(tars: list[Path], task_index: int, num_tasks: int) -> list[Path]:
    """The tars of task ``task_index`` of ``num_tasks`` (round-robin, so big and small tars spread out)."""
    counts = Counter(contract.store_name(p) for p in tars)
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        raise SourcesError(f"input tars would share store names: {duplicates[:5]}")
    try:
        return task_slice(tars, task_index, num_tasks)
    except TaskSliceError as exc:
        raise SourcesError(str(exc)) from None
