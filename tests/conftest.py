"""Shared fixtures: the repository root and a real local Slurm cluster (one per test session).

Keep this file small: other fixtures live in their own modules.
"""

import shutil
import tempfile
from pathlib import Path

import pytest
import torch.distributed as dist

from slurm_helpers import SlurmCluster

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTED_SLURM = "22.05"
"""The Slurm release the suite ran against (Debian 12's 22.05.8); tests marked ``slurm_22_05`` check
behaviour seen on it (requeue timing, how fake GPUs show in jobs) and fail on another release."""
_SLURM_VERSION = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def one_rank_group():
    """A one-process gloo group: TorchTitan's ``train_step`` and FSDP2 ask for meshes."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory, pytestconfig):
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
    pytestconfig.stash[_SLURM_VERSION] = cluster.version()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _slurm_release_as_tested(request):
    """A test marked ``slurm_22_05`` states what it checks is 22.05's behaviour: on another release it
    fails up front, saying so, instead of failing (or passing) for a reason nobody looked at."""
    if request.node.get_closest_marker("slurm_22_05"):
        version = request.getfixturevalue("slurm_cluster").version()
        assert version.startswith(TESTED_SLURM + "."), f"written against Slurm {TESTED_SLURM}, running {version}"


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if _SLURM_VERSION in config.stash:
        terminalreporter.write_line(f"local Slurm cluster: slurm {config.stash[_SLURM_VERSION]} "
                                    f"(suite written against {TESTED_SLURM})")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The HF_TOKEN scan (tests/reliability/test_zz_logs.py) runs last of the whole session, so it reads
    every log and output file the other tests wrote, not only those of the tests collected before it."""
    items.sort(key=lambda item: item.path.name == "test_zz_logs.py")
