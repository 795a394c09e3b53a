#!/usr/bin/env bash
# Set up a fresh Debian machine (as root) to run the tests and the demo; idempotent and fast when
# everything is already there:
#   1. Slurm + munge packages for the local test cluster (scripts/local_slurm.sh install)
#   2. .venv with python3 >= 3.11
#   3. torch==2.13.0 first: a CPU wheel on local disk; an unpinned torch would fetch a multi-GB CUDA build
#   4. the project, editable, with its test extras
set -euo pipefail
cd "$(dirname "$0")/.."

step() { echo "setup: $*"; }
die() { echo "setup: $*" >&2; exit 1; }
TORCH=torch==2.13.0
STAMP=.venv/.setup-done   # holds the hash of what was installed last time

step "Slurm + munge"
bash scripts/local_slurm.sh install

step "Python venv (.venv)"
if ! command -v python3 >/dev/null; then
    apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "python3 >= 3.11 needed, found $(python3 --version 2>&1)"
if ! .venv/bin/python -c '' 2>/dev/null; then
    # Debian ships venv's pip bootstrap in a separate package.
    python3 -m venv .venv 2>/dev/null || {
        rm -rf .venv
        apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        python3 -m venv .venv
    }
fi

# Skip pip entirely when nothing changed since the last successful run (pip's resolver takes a while).
want=$(cat pyproject.toml <(echo "$TORCH") | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && $(<"$STAMP") == "$want" ]] &&
    .venv/bin/python -c 'import importlib.metadata as m; m.version("flux-encode-once")' 2>/dev/null; then
    step "project already installed in .venv"
    exit 0
fi

step "$TORCH (CPU wheel)"
.venv/bin/python -m pip install -qq "$TORCH"

step "project + test extras (pip install -e '.[test]')"
# Re-pinning torch keeps pip from swapping it for another build while resolving the project's deps.
.venv/bin/python -m pip install -qq -e '.[test]' "$TORCH"
echo "$want" >"$STAMP"
step "done: run the tests with 'bash scripts/test.sh'"
