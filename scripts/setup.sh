#!/usr/bin/env bash
# Set up a fresh Debian machine (as root) to run the tests and the demo; idempotent and fast when
# everything is already there:
#   1. Slurm + munge packages for the local test cluster (scripts/local_slurm.sh install), strace
#      (tests/test_crash_consistency.py reads the order of a Stage 1 run's fsyncs and renames) and g++
#      (tests/test_plan_compile.py compiles a block with Inductor, which builds C++ on a CPU)
#   2. .venv with python3 >= 3.11
#   3. torch, the CPU build, at the lock's version: from the PyTorch CPU wheel index when it is reachable,
#      otherwise from the configured index (PyPI) by name, which is the CPU build only where that index
#      serves one (this project's CPU machines: a local wheel); on plain PyPI that is the CUDA build
#   4. the project, editable, with its test extras, every package pinned by requirements/lock-cpu.txt
set -euo pipefail
cd "$(dirname "$0")/.."

step() { echo "setup: $*"; }
die() { echo "setup: $*" >&2; exit 1; }
LOCK=requirements/lock-cpu.txt   # refresh: bash scripts/lock.sh
TORCH=$(grep -E '^torch==' "$LOCK") || die "$LOCK pins no torch"
CPU_INDEX=https://download.pytorch.org/whl/cpu
STAMP=.venv/.setup-done   # holds the hash of what was installed last time

step "Slurm + munge"
bash scripts/local_slurm.sh install
missing=()
command -v strace >/dev/null || missing+=(strace)
command -v g++ >/dev/null || missing+=(g++)
if ((${#missing[@]})); then
    step "${missing[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
        die "installing ${missing[*]} failed (needs root)"
fi

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
want=$(cat pyproject.toml "$LOCK" | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && $(<"$STAMP") == "$want" ]] &&
    .venv/bin/python -c 'import importlib.metadata as m; m.version("flux-encode-once")' 2>/dev/null; then
    step "project already installed in .venv"
    exit 0
fi

if .venv/bin/python -c "import urllib.request as u; u.urlopen('$CPU_INDEX/torch/', timeout=5)" 2>/dev/null; then
    step "$TORCH from the PyTorch CPU wheel index ($CPU_INDEX)"
    .venv/bin/python -m pip install -qq --no-deps --index-url "$CPU_INDEX" "$TORCH"
else
    step "$TORCH from the configured index (PyPI): $CPU_INDEX is not reachable from here"
    .venv/bin/python -m pip install -qq -c "$LOCK" "$TORCH"
fi
.venv/bin/python -W ignore -c 'import torch; print("setup: installed torch", torch.__version__, "CUDA build:", torch.version.cuda)'

step "project + test extras (pip install -c $LOCK -e '.[test]')"
# The constraints pin torch too, so pip keeps the build installed above while resolving the rest.
.venv/bin/python -m pip install -qq -c "$LOCK" -e '.[test]'
echo "$want" >"$STAMP"
step "done: run the tests with 'bash scripts/test.sh'"
