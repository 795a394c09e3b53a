#!/usr/bin/env bash
# The project's test command: `bash scripts/test.sh [pytest args...]`.
# Sets the machine up if needed (scripts/setup.sh), then runs the suite in tests/ (or the test paths
# given as arguments). Pytest's tests start their own local Slurm cluster (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

# Whole suite unless the first argument names a test file/dir (e.g. tests/test_local_slurm.py::x).
targets=(tests)
[[ $# -gt 0 && -e ${1%%::*} ]] && targets=()

rc=0
.venv/bin/python -m pytest "${targets[@]}" "$@" || rc=$?
if ((rc == 5)); then
    # A suite that runs nothing must not read as a pass (pytest: "no tests collected").
    echo "test.sh: no tests were collected: failing" >&2
fi
exit "$rc"
