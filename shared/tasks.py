"""How array tasks split work without coordinating: sorted inputs, task ``i`` of ``N`` takes i, i+N, …

One rule for every array job (Stage 1's encode, the CC12M download), so any array size covers each
input exactly once and a rerun of task ``i`` owns exactly what it owned before.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

T = TypeVar("T")


class TaskSliceError(ValueError):
    """The task index does not fit the task count."""


def task_slice(items: Sequence[T], task_index: int, num_tasks: int) -> list[T]:
    """The items of task ``task_index`` of ``num_tasks`` (round-robin, so big and small inputs spread out)."""
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise TaskSliceError(f"task index {task_index} is outside 0..{num_tasks - 1} (num_tasks={num_tasks})")
    return list(items[task_index::num_tasks])
