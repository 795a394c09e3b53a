"""Runs last of the session (tests/conftest.py puts it there). First it runs the code that handles
``HF_TOKEN`` (a canary every process of the suite inherits, see conftest.py) for real, against a fake
Hub that refuses the token: the weights fetch, the CC12M download and Stage 1 streaming ``hf://``
input, each a CLI in its own process with its output and logs kept. Then the canary must appear in no
file the session produced: those logs and outputs, the Hub client's home, every other test's logs,
ledgers, Slurm output and metadata."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fake_hub import FakeHub

pytest_plugins = ["fixtures_assets"]

REPO = Path(__file__).resolve().parents[2]
# Pretend there is room for the downloads, so the token is sent rather than a disk check failing first.
_ASSETS_CLI = ("import sys; from downloads import cc12m, fetch; cc12m.free_bytes = fetch.free_bytes = lambda p: 1 << 50; "
               "from downloads.__main__ import main; sys.exit(main(sys.argv[1:]))")


def _token_handling_runs(out: Path, assets: Path) -> dict[str, list[str]]:
    """The three ways the product uses HF_TOKEN, as their command lines."""
    return {
        "fetch": [sys.executable, "-c", _ASSETS_CLI, "fetch", "--out", str(out / "weights")],
        "cc12m": [sys.executable, "-c", _ASSETS_CLI, "cc12m", "--out", str(out / "cc12m"), "--shards", "0-1"],
        "stream": [sys.executable, "-m", "stage1_encode", "--input", "hf://datasets/pixparse/cc12m-wds",
                   "--output", str(out / "dataset"), "--assets", str(assets),
                   "--config", str(REPO / "configs" / "encode_tiny.toml")],
    }


def test_hf_token_is_never_printed_or_logged(hf_token_canary, tiny_assets, tmp_path, tmp_path_factory, tally):
    tally.trial("security checks")
    assert os.environ["HF_TOKEN"] == hf_token_canary
    with FakeHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(REPO)}
        for name, command in _token_handling_runs(tmp_path, tiny_assets).items():
            seen = len(hub.requests)
            with open(tmp_path / f"{name}.out", "w") as stdout, open(tmp_path / f"{name}.err", "w") as stderr:
                rc = subprocess.run(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr, timeout=180).returncode
            errors = (tmp_path / f"{name}.err").read_text()
            assert rc != 0 and "error" in errors.lower(), (name, errors[-3000:])
            sent = [auth for _, _, auth in hub.requests[seen:]]
            assert f"Bearer {hf_token_canary}" in sent, (name, hub.requests[seen:], errors[-3000:])

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
    assert logs >= 6
    tally.notes.append(f"HF_TOKEN canary: sent by fetch, cc12m and hf:// streaming; {scanned} files scanned ({logs} logs), 0 leaks")
    tally.passed("security checks")
