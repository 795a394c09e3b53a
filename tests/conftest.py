"""Shared fixtures: the repository root and a real local Slurm cluster (one per test session).

Keep this file small: other fixtures live in their own modules.
"""

import shutil
import tempfile
from pathlib import Path

import pytest

from slurm_helpers import SlurmCluster

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A controller + nodes n1, n2 (8 fake GPUs each) started by scripts/local_slurm.sh.

    Submit with slurm_cluster.submit(script, *args, sbatch_opts=[...], env_extra={...}); see
    tests/slurm_helpers.py. Its logs stay in pytest's tmp dir (…/slurm0/log) for post-mortems.
    """
    if shutil.which("slurmctld", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        pytest.fail("Slurm is not installed: run `bash scripts/setup.sh` (or scripts/local_slurm.sh install)")
    state_dir = tmp_path_factory.mktemp("slurm")
    if len(str(state_dir)) > 70:  # munge's unix socket path must stay under 108 bytes
        state_dir = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    cluster = SlurmCluster(state_dir, REPO_ROOT)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
