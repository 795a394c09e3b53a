"""Runs last in this directory: HF_TOKEN (a canary that every process of the suite inherited, see
conftest.py) must appear in no file the session produced: logs, ledgers, Slurm output, metadata."""

from __future__ import annotations

import os


def test_hf_token_is_never_printed_or_logged(hf_token_canary, tmp_path_factory, tally):
    tally.trial("security checks")
    assert os.environ["HF_TOKEN"] == hf_token_canary
    base = tmp_path_factory.getbasetemp()
    scanned, logs, leaks = 0, 0, []
    needle = hf_token_canary.encode()
    for root, dirs, files in os.walk(base):
        # slurmctld's own spool keeps each job's submitted environment (sbatch --export=ALL) by design;
        # it is Slurm's state, readable by root only, not a log of ours.
        dirs[:] = [d for d in dirs if d != "ctld"]
        for name in files:
            path = os.path.join(root, name)
            try:
                if os.path.islink(path) or os.path.getsize(path) > 50_000_000:
                    continue
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            scanned += 1
            logs += name.endswith((".log", ".out", ".err", ".jsonl"))
            if needle in data:
                leaks.append(path)
    assert leaks == [], f"HF_TOKEN leaked into {leaks}"
    assert scanned > 0
    tally.notes.append(f"HF_TOKEN canary: {scanned} files scanned ({logs} logs), 0 leaks")
    tally.passed("security checks")
