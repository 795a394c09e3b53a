"""``scripts/setup_cluster.sh`` on this CPU machine: ``--cpu`` picks the CPU wheel index and, with the
venv already there, pip only confirms it; ``--skip-fetch`` keeps the weights' download (network) out."""

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "setup_cluster.sh"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"} | (env or {})
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=600)


def test_refuses_to_start_without_a_token_or_assets(tmp_path):
    result = run("--assets", str(tmp_path / "assets"), "--cpu")
    assert result.returncode == 1 and "export HF_TOKEN" in result.stderr
    assert "give --assets DIR" in run("--cpu", "--skip-fetch").stderr
    assert "unknown argument --gpu" in run("--gpu").stderr


def test_cpu_setup_installs_and_prints_the_next_three_commands(tmp_path):
    assets = tmp_path / "assets"
    result = run("--assets", str(assets), "--cpu", "--skip-fetch")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "torch (torch==2.13.0) from https://download.pytorch.org/whl/cpu" in out  # the lock's torch
    assert "CUDA build None" in out
    assert f"weights: skipped (--skip-fetch); later: HF_TOKEN=… .venv/bin/python -m downloads fetch --out {assets}" in out
    nexts = [line.strip() for line in out.splitlines() if line.strip()[:3] in ("1. ", "2. ", "3. ")]
    assert [n.split(" ", 2)[1] for n in nexts] == ["sbatch", ".venv/bin/python", "sbatch"], out
    assert f"--assets {assets}" in nexts[0] and "slurm/train.sbatch" in nexts[2]
    assert not assets.exists()
