"""The run planner (``python -m stage2_train.plan``) against real runs, and preflight's memory check.

* Its parameter, gradient and optimizer-state bytes per rank for flux-tiny equal those of a real
  training step on gloo (world 2 and 4, FSDP2/HSDP through the project's parallelize), counted here
  on the real tensors' storages; its optimizer state is AdamW's two fp32 moments of the shard plus
  the step counters (the upstream tracker's category booked 13x that for flux-schnell).
* Its linear fit predicts the confirming step's peak.
* Preflight refuses a config whose planned peak exceeds the GPU in one line naming a batch that fits,
  and that batch passes; its recorded fits equal the committed plans'.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_stage2_helpers import REPO_ROOT, TINY_CONFIG, parse_job_config

from preflight.system import Cluster
from preflight.table import FAIL, OK, Row
from stage2_train.plan.check import fits_of_plan, recorded_fits

GIB = 2**30


def degrees(replicate: int, shard: int) -> list[str]:
    return ["--parallelism.data_parallel_replicate_degree", str(replicate),
            "--parallelism.data_parallel_shard_degree", str(shard)]  # fmt: skip


def distinct_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages (by address) behind the local shards of ``tensors``."""
    storages = {}
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        storages[local.untyped_storage().data_ptr()] = local.untyped_storage().nbytes()
    return sum(storages.values())


def real_step(rank: int, world: int, replicate: int, init_file: str, out: str) -> None:
    """Two real training steps on gloo; rank 0 writes its state bytes by kind."""
    from stage2_train.infra.device import use_cpu_if_no_cuda
    from stage2_train.plan.step import build, train_step

    use_cpu_if_no_cuda()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    job = parse_job_config(*degrees(replicate, world // replicate))
    built = build(job, world, torch.device("cpu"), fake=False)
    for _ in range(2):
        train_step(built, 2)
    params = list(built.model.parameters())
    counts = {
        "parameters": distinct_bytes(params + list(built.model.buffers())),
        "gradients": distinct_bytes([p.grad for p in params]),
        "optimizer_state": distinct_bytes(
            [v for o in built.optimizers.optimizers for s in o.state.values() for v in s.values()]
        ),
        "step_counters": sum(len(o.state) for o in built.optimizers.optimizers),
    }
    if rank == 0:
        Path(out).write_text(json.dumps(counts))
    dist.destroy_process_group()


def run_plan(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "stage2_train.plan", "--job.config_file", str(TINY_CONFIG), "--json", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("replicate, shard", [(1, 2), (2, 2)], ids=["fsdp-2", "hsdp-2x2"])
def test_state_bytes_per_rank_equal_a_real_run(tmp_path, replicate, shard):
    world = replicate * shard
    out = tmp_path / "real.json"
    mp.spawn(real_step, args=(world, replicate, str(tmp_path / "init"), str(out)), nprocs=world, join=True)
    real = json.loads(out.read_text())
    plan = run_plan(*degrees(replicate, shard), "--gpu-memory", "2", "--modes", "none")
    planned = plan["state_bytes_per_rank"]
    assert {k: planned[k] for k in ("parameters", "gradients", "optimizer_state")} == {
        k: real[k] for k in ("parameters", "gradients", "optimizer_state")
    }
    # AdamW: exp_avg and exp_avg_sq of each fp32 shard (buffers: none in Flux) plus one fp32 step counter per parameter.
    assert planned["optimizer_state"] == 2 * planned["parameters"] + 4 * real["step_counters"]
    assert planned["gradients"] == planned["parameters"]
    # The peak is linear in the batch: the fit through two probe batches predicts the confirming step.
    gpu = plan["gpus"][0]
    pick, mode = gpu["pick"], plan["modes"][gpu["pick"]["mode"]]
    predicted = max(a + b * pick["batch"] for a, b in mode["peak_lines"])
    assert pick["batch"] > 4
    assert pick["confirmed"]["peak_gib"] * GIB == pytest.approx(predicted, rel=0.02)
    assert pick["confirmed"]["peak_gib"] * GIB <= gpu["usable_bytes"] * 1.02
    # Preflight's recorded fit for this config (stage2_train/plan/fits.json) is the full plan's.
    fits = fits_of_plan(parse_job_config(*degrees(replicate, shard)), plan)
    assert fits and {k: recorded_fits().get(k) for k in fits} == fits


def preflight_memory_row(*overrides: str) -> Row:
    """Preflight's GPU memory row for flux-tiny sharded over 2 (its recorded fit: no fake step here)."""
    from stage2_train import preflight

    job = parse_job_config(*degrees(1, 2), *overrides)
    shape = {"replicate": 1, "shard": 2, "tp": 1, "cp": 1, "pp": 1}
    return preflight.gpu_memory_row(job, shape, Cluster(nodes=1, allocated_gpus=None, visible_gpus=0))


def test_preflight_refuses_a_config_that_does_not_fit_and_names_one_that_does():
    tiny_gpu = "1.07"  # GiB: 5 % headroom and the 1 GiB allocator margin leave ~17 MiB for flux-tiny's step
    refused = preflight_memory_row("--stage2.gpu_memory_gib", tiny_gpu, "--training.local_batch_size", "16")
    assert refused.status == FAIL and refused.detail.startswith("does not fit: batch 16") and "\n" not in refused.detail
    suggested = re.search(r"--training.local_batch_size (\d+) fits", refused.detail)
    assert suggested, refused
    passed = preflight_memory_row("--stage2.gpu_memory_gib", tiny_gpu, "--training.local_batch_size", suggested[1])
    assert passed.status == OK, passed
    assert preflight_memory_row("--stage2.gpu_memory_gib", "80", "--training.local_batch_size", "16").status == OK
    assert "not checked" in preflight_memory_row().detail  # no GPU here and no --stage2.gpu_memory_gib


def test_recorded_fits_equal_the_committed_plans():
    recorded = recorded_fits()
    plans = sorted((REPO_ROOT / "bench" / "results").glob("plan_flux_schnell*.json"))
    assert len(plans) == 4
    by_nodes: dict[str, dict] = {}
    for path in plans:
        plan = json.loads(path.read_text())
        config = REPO_ROOT / "configs" / ("flux_schnell.toml" if plan["image_size"] == 256 else "flux_schnell_512.toml")
        job = parse_job_config(*degrees(plan["replicate"], plan["shard"]), config_file=config)
        fits = fits_of_plan(job, plan)
        assert {k: recorded[k] for k in fits} == fits
        by_nodes.setdefault(str(plan["image_size"]), {})[plan["replicate"]] = fits
    for fits in by_nodes.values():  # a rank's memory does not depend on the node count (plan_check's key)
        assert fits[2] == fits[8]
