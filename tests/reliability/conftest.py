"""Reliability suite: shared tally of trials/kinds and the one summary line printed at the end.

Tests record what they tried through the ``tally`` fixture; ``pytest_terminal_summary`` prints e.g.
``reliability: stage1 kill trials 4/4 ok, ..., bad-input kinds 24/24 ok, valid controls 21/21 ok, ...,
failures 0``. A trial counts as ok only once every assertion about it passed, so a failing test shows
up both as a failure and as a missing ok.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

HF_TOKEN_CANARY = "hf_reliabilityCanary7Qz3xW9"
"""Fake token put in HF_TOKEN of every process this suite starts; test_zz_logs greps every log for it."""

_TALLY_KEY = pytest.StashKey["Tally"]()
_ORDER = ("stage1 kill trials", "stage1 slurm trials", "stage1 same-tar races", "stage1 full-disk trials",
          "stage2 kill trials", "stage2 corrupt-store trials", "bad-input kinds", "valid controls",
          "security checks")


class Tally:
    def __init__(self) -> None:
        self.tried: Counter = Counter()
        self.ok: Counter = Counter()
        self.notes: list[str] = []
        self.log_dirs: list[Path] = []

    def trial(self, what: str) -> None:
        self.tried[what] += 1

    def passed(self, what: str, n: int = 1) -> None:
        self.ok[what] += n

    def line(self, failures: int) -> str:
        names = [n for n in _ORDER if n in self.tried] + sorted(set(self.tried) - set(_ORDER))
        parts = [f"{name} {self.ok[name]}/{self.tried[name]} ok" for name in names]
        return "reliability: " + ", ".join(parts + [f"failures {failures}"])


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_TALLY_KEY] = Tally()


@pytest.fixture(scope="session")
def tally(request) -> Tally:
    return request.config.stash[_TALLY_KEY]


@pytest.fixture(scope="session", autouse=True)
def hf_token_canary():
    """Every process started from here on inherits a recognisable fake HF_TOKEN."""
    old = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = HF_TOKEN_CANARY
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield HF_TOKEN_CANARY
    if old is None:
        os.environ.pop("HF_TOKEN", None)
    else:
        os.environ["HF_TOKEN"] = old


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    tally = config.stash.get(_TALLY_KEY, None)
    if tally is None or not tally.tried:
        return
    here = "tests/reliability/"
    failures = sum(
        1 for key in ("failed", "error") for rep in terminalreporter.stats.get(key, [])
        if here in getattr(rep, "nodeid", "") or getattr(rep, "nodeid", "").startswith("reliability/")
    )
    for note in tally.notes:
        terminalreporter.write_line(f"reliability note: {note}")
    terminalreporter.write_line(tally.line(failures))
