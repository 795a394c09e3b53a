"""What Slurm says about this job (``scontrol show job``), and the preflight row built from it.

Slurm shows a job's time limit, start and end time, but not its ``--signal`` lead: the lead comes from
the history (measured at the last time-limit stop) or is the script's default.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from preflight.table import OK, WARN, Row
from stage2_train import history
from stage2_train.infra import failure_budget

DEFAULT_LEAD_S = 300
"""``#SBATCH --signal=B:USR1@300`` in slurm/train.sbatch."""


def job_fields(job_id: str) -> dict[str, str]:
    """``scontrol -o show job``'s Key=Value pairs (none when Slurm cannot be asked)."""
    try:
        command = ["scontrol", "-o", "show", "job", job_id]
        out = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(part.split("=", 1) for part in out.split() if "=" in part)


def seconds_of(limit: str) -> float | None:
    """Slurm's ``[D-]HH:MM:SS`` (``UNLIMITED``: None)."""
    days, _, clock = limit.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
    except ValueError:
        return None
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def epoch(stamp: str) -> float | None:
    """Seconds since the epoch of Slurm's local ``YYYY-MM-DDTHH:MM:SS`` (``Unknown``, ``None``: None)."""
    try:
        return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def time_limit_row(dump: Path, environ: os._Environ | dict[str, str] = os.environ) -> Row | None:
    """Preflight: does ``--time`` leave a start a few minutes of training after start-up and before the
    time-limit signal? Start-up and signal lead as the last start measured them, when there was one."""
    job = environ.get("SLURM_JOB_ID")
    limit = seconds_of(job_fields(job).get("TimeLimit", "UNLIMITED")) if job else None
    if limit is None:
        return None
    starts = history.read(dump)
    startup = next((s.startup_s for s in reversed(starts) if s.startup_s is not None), 0.0)
    # A SIGUSR1 sent by hand (scancel --signal=USR1 --batch) measures no lead: keep plausible ones only.
    leads = [s.signal_lead_s for s in starts if s.signal_lead_s is not None and s.signal_lead_s < limit / 2]
    lead = leads[-1] if leads else None
    enough, text = failure_budget.room_after_startup(limit, lead if lead is not None else DEFAULT_LEAD_S, startup)
    source = "as the last start measured" if lead is not None else "the script's default lead assumed"
    return Row("time limit", OK if enough else WARN, f"{text} ({source})")
