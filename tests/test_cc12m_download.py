"""``python -m downloads cc12m``: arguments, resume after a kill, verification, and the refusals,
against a local directory behind our own ``Remote`` interface (never the Hub)."""

import argparse
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_remote import DirectoryRemote, write_remote

from downloads import cc12m
from downloads.__main__ import main
from downloads.hub import FetchError
from downloads.mirror import STAGING
from shared.tasks import TaskSliceError

REPO = Path(__file__).resolve().parent.parent
SIZE = 256 * 1024


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finals(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("cc12m-train-*.tar"))


def closed_port() -> int:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return env | {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(REPO)} | extra


@pytest.fixture
def remote(tmp_path) -> DirectoryRemote:
    write_remote(tmp_path / "remote", count=8, size=SIZE)
    return DirectoryRemote(tmp_path / "remote", tmp_path / "fetched.log")


# --------------------------------------------------------------------------- arguments


def test_shard_ranges_and_task_slices():
    assert cc12m.parse_shards("0-9") == range(10)
    assert cc12m.parse_shards("42") == range(42, 43)
    assert cc12m.parse_shards("2175") == range(2175, 2176)
    for bad in ("9-0", "0-2176", "2176", "x", "-1", "1-", "1-2-3", "", " 1"):
        with pytest.raises(argparse.ArgumentTypeError):
            cc12m.parse_shards(bad)
    # Stage 1's slicing: task i of N takes i, i+N, …
    assert cc12m.task_shards(range(10), 1, 3) == ["cc12m-train-0001.tar", "cc12m-train-0004.tar", "cc12m-train-0007.tar"]
    slices = [cc12m.task_shards(range(2176), i, 16) for i in range(16)]
    assert sorted(n for s in slices for n in s) == [cc12m.shard_name(i) for i in range(2176)]
    with pytest.raises(TaskSliceError, match="task index 3 is outside 0..2"):
        cc12m.task_shards(range(10), 3, 3)


def test_bad_arguments_fail_before_any_download(tmp_path, capsys):
    for args, message in (
        (["--shards", "9-0"], "argument --shards: '9-0' must name shards within 0-2175, first <= last"),
        (["--shards", "a-b"], "argument --shards: 'a-b' is not a shard range like 0-9 or 42"),
        (["--workers", "0"], "--workers must be at least 1"),
    ):
        with pytest.raises(SystemExit) as exited:
            main(["cc12m", "--out", str(tmp_path / "out"), *args])
        assert exited.value.code == 2 and message in capsys.readouterr().err
    assert main(["cc12m", "--out", str(tmp_path / "out"), "--task-index", "4", "--num-tasks", "4"]) == 1
    assert capsys.readouterr().err.strip() == "error: task index 4 is outside 0..3 (num_tasks=4)"
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- resume and verification


def test_rerun_fetches_only_what_is_missing_or_broken(remote, tmp_path, capsys):
    out = tmp_path / "out"
    names = cc12m.task_shards(range(6), 0, 1)
    summary = cc12m.mirror_tars(remote, out, names[:3], workers=2, verify=False, interval_s=60)
    assert summary == f"3 tars in {out}: 3 fetched, 0 already there"
    assert finals(out) == names[:3] and sorted(remote.fetched()) == names[:3]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("cc12m: 3/3 files, 768 KiB/768 KiB, ") and " ETA " in line

    (out / names[0]).write_bytes((out / names[0]).read_bytes()[:1000])  # truncated
    flipped = bytearray((out / names[1]).read_bytes())
    flipped[5] ^= 1
    (out / names[1]).write_bytes(bytes(flipped))  # same size, other bytes
    remote.log.unlink()
    summary = cc12m.mirror_tars(remote, out, names, workers=2, verify=False, interval_s=60)
    assert summary == f"6 tars in {out}: 4 fetched, 2 already there"
    assert sorted(remote.fetched()) == [names[0], *names[3:]]  # a size check cannot see the flipped bit
    remote.log.unlink()
    cc12m.mirror_tars(remote, out, names, workers=2, verify=True, interval_s=60)
    assert remote.fetched() == [names[1]]
    assert all(sha(out / n) == sha(remote.root / n) for n in names)
    assert list((out / STAGING).iterdir()) == []


def test_killed_download_leaves_no_partial_tar_and_resumes(tmp_path):
    write_remote(tmp_path / "remote", count=8, size=SIZE)
    out = tmp_path / "out"
    code = (
        "import sys; from pathlib import Path; from fake_remote import DirectoryRemote; from downloads import cc12m;"
        f"r = DirectoryRemote(Path({str(tmp_path / 'remote')!r}), Path({str(tmp_path / 'killed.log')!r}), delay_s=0.02);"
        f"cc12m.mirror_tars(r, Path({str(out)!r}), cc12m.task_shards(range(8), 0, 1), 2, False, 0.1)"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (len(finals(out)) >= 2 and any((out / STAGING).glob("*.tar"))):
            assert child.poll() is None and time.monotonic() < deadline, child.stderr.read() if child.stderr else ""
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    names = cc12m.task_shards(range(8), 0, 1)
    done_before = finals(out)
    assert 2 <= len(done_before) < 8
    assert all(sha(out / n) == sha(tmp_path / "remote" / n) for n in done_before)  # never a partial final name
    assert any(p.stat().st_size < SIZE for p in (out / STAGING).glob("*.tar"))  # the kill hit mid-file

    remote = DirectoryRemote(tmp_path / "remote", tmp_path / "rerun.log")
    cc12m.mirror_tars(remote, out, names, workers=2, verify=False, interval_s=60)
    assert sorted(remote.fetched()) == sorted(set(names) - set(done_before))
    assert finals(out) == names and all(sha(out / n) == sha(tmp_path / "remote" / n) for n in names)


def test_a_download_that_does_not_match_the_listing_is_deleted(tmp_path):
    names = write_remote(tmp_path / "remote", count=3, size=SIZE)
    liar = DirectoryRemote(tmp_path / "remote", tmp_path / "fetched.log", lie_about=names[1])
    with pytest.raises(FetchError, match=rf"{names[1]} from directory .*: sha256 [0-9a-f]{{12}}…, expected 000000000000…; "
                                          "deleted it, rerun to fetch it again"):
        cc12m.mirror_tars(liar, tmp_path / "out", names, workers=1, verify=False, interval_s=60)
    assert names[1] not in finals(tmp_path / "out")
    assert not (tmp_path / "out" / STAGING / names[1]).exists()


def test_refusals_before_downloading(remote, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(FetchError, match=r"lists no cc12m-train-0008.tar \(2 of the 10 requested tars\)"):
        cc12m.mirror_tars(remote, out, cc12m.task_shards(range(10), 0, 1), 2, False, 60)
    monkeypatch.setattr(cc12m, "free_bytes", lambda path: 2_000_000)  # 8 x 256 KiB x 1.05 = 2.2 MB needed
    with pytest.raises(FetchError, match=r"not enough disk space for .*out: 0\.0 GB free, 0\.0 GB needed"):
        cc12m.mirror_tars(remote, out, cc12m.task_shards(range(8), 0, 1), 2, False, 60)
    assert remote.fetched() == []


# --------------------------------------------------------------------------- the Hub, offline


def test_without_token(tmp_path):
    result = subprocess.run([sys.executable, "-m", "downloads", "cc12m", "--out", str(tmp_path / "out")], cwd=REPO,
                            env=offline_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: HF_TOKEN is not set; export a Hugging Face token that can read pixparse/cc12m-wds"
    ]
    assert not (tmp_path / "out").exists()


def test_sbatch_task_without_network(slurm_cluster, tmp_path):
    """The real array script on the local cluster runs the CLI with its task's share; a dead network
    fails at once, in one line, and the token never reaches the log."""
    port, secret = closed_port(), "hf_SECRETtoken1234567890"
    hub = {"HF_TOKEN": secret, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf-home"),
           "FLUX_NUM_TASKS": "2"}

    def task(index: int) -> str:
        job = slurm_cluster.submit(
            REPO / "slurm" / "download_cc12m.sbatch", "--out", tmp_path / "out", "--shards", "0-3",
            sbatch_opts=[f"--array={index}", f"--output={tmp_path}/task-{index}.out", "--cpus-per-task=1", "--mem=1G"],
            env_extra=hub,
        )
        assert job.returncode == 1, job.logs()
        return job.log(task=index)

    started = time.monotonic()
    log = task(1)
    assert time.monotonic() - started < 45
    assert log.strip().splitlines() == [
        f"error: cannot reach http://127.0.0.1:{port} (network unreachable?): ConnectError: [Errno 111] Connection refused"
    ]
    assert secret not in log
    assert task(2).strip() == "error: task index 2 is outside 0..1 (num_tasks=2)"
