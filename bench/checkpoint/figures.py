"""Checkpoint figures from the trainer's own records: its metrics lines (one per step) and its log.

TorchTitan logs a step's metrics inside ``train_step`` and saves the checkpoint after it, so the save of
interval step k lands in the logged time of step k + 1 (``time_metrics/end_to_end(s)``, wall time between
two log calls): the stall of a save is that step's time minus the median of steps that follow no save.
An asynchronous save goes on writing while the next steps train; what that costs them shows in
``interval_excess_s``, every step of the interval over the median, summed.
"""

from __future__ import annotations

import re
import statistics
from typing import Any

from bench.stage2.figures import STEP_TIME

SAVE_LINE = re.compile(r"Finished saving the checkpoint \(or staging if async is enabled\)\s*in ([\d.]+) seconds")


def step_times(records: list[dict[str, Any]]) -> dict[int, float]:
    return {r["step"]: r[STEP_TIME] for r in records if STEP_TIME in r}


def save_stalls(records: list[dict[str, Any]], interval: int, warmup: int) -> dict[str, Any]:
    """Per interval save: its stall and the whole interval's excess over the median step time."""
    times = step_times(records)
    last = max(times, default=0)
    plain = [t for step, t in times.items() if step > warmup and (step - 1) % interval != 0]
    if not plain:
        return {}
    median = statistics.median(plain)
    saves = [k for k in range(interval, last, interval) if k > warmup and k + 1 in times]
    stalls = [times[k + 1] - median for k in saves]
    excess = [sum(times[s] - median for s in range(k + 1, min(k + interval, last) + 1)) for k in saves]
    return {"median_step_s": median, "save_steps": saves, "stalls_s": stalls, "interval_excess_s": excess}


def last_save_seconds(log_text: str) -> float | None:
    """The blocking time TorchTitan logged for the run's last save (the stop save: synchronous)."""
    found = SAVE_LINE.findall(log_text)
    return float(found[-1]) if found else None


def round_all(values: list[float], digits: int = 3) -> list[float]:
    return [round(v, digits) for v in values]
