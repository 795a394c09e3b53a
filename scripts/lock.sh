#!/usr/bin/env bash
# Refresh requirements/lock-cpu.txt, the pinned install of every machine (scripts/setup.sh, CI, the
# cluster venv), from what pip resolved into .venv: `bash scripts/lock.sh` after changing pyproject's
# dependencies and reinstalling (`.venv/bin/pip install -U -e '.[test]'`); then run tests/test_lock.py.
# Local version labels (2.13.0+cpu) are dropped so that a CUDA build of the same version satisfies the pin.
set -euo pipefail
cd "$(dirname "$0")/.."

lock=requirements/lock-cpu.txt
{
    echo "# Pinned resolution of pyproject.toml's dependencies and [test] extras (Python 3.11, Linux x86_64)."
    echo "# Installed as constraints: pip install -c $lock -e '.[test]' (scripts/setup.sh)."
    echo "# Refresh: bash scripts/lock.sh (from .venv: pip freeze, local version labels dropped)."
    echo "# tests/test_lock.py fails if pyproject.toml and this file disagree."
    .venv/bin/python -m pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$//'
} >"$lock.tmp"
mv "$lock.tmp" "$lock"
echo "lock: wrote $lock ($(grep -c '==' "$lock") pins)"
