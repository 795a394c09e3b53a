"""One trainer run: ``torchrun`` of the trainer's own entry point on one device, read back as the
metrics records the trainer wrote (``[metrics] jsonl_file``), with an outcome."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.stage2.inputs import OnlineInputs
from bench.stage2.variants import Variant

REPO = Path(__file__).resolve().parents[2]
PRODUCT_CONFIG = REPO / "configs" / "flux_schnell.toml"
ONLINE_CONFIG = Path(__file__).with_name("online.toml")
METRICS_FILE = "metrics.jsonl"
OOM_MARKERS = ("OutOfMemoryError", "CUDA out of memory")
FULL_PCT = 98.0
"""A run that fails after a step used this much of the device's memory ran out of it, whatever the
error says: with the memory full, NCCL's first collective fails as ``ncclUnhandledCudaError``."""


@dataclasses.dataclass(frozen=True)
class Job:
    variant: Variant
    flavor: str
    batch: int
    steps: int
    image_size: int = 256
    seed: int = 0
    compile_backend: str = "inductor"
    trainer_args: tuple[str, ...] = ()
    """More ``--section.key value`` overrides for the trainer (e.g. its profiler)."""


@dataclasses.dataclass
class Outcome:
    status: str  # ok | oom | error | timeout
    records: list[dict]
    log: Path
    wall_s: float
    reason: str = ""


def command(job: Job, dump: Path, data: Path | OnlineInputs) -> list[str]:
    """The trainer's command line: its config file, then what this job changes."""
    common = (
        "--job.dump_folder", str(dump), "--model.flavor", job.flavor,
        "--training.local_batch_size", str(job.batch), "--training.steps", str(job.steps),
        "--training.img_size", str(job.image_size),
        "--metrics.log_freq", "1", "--metrics.jsonl_file", METRICS_FILE,
        "--compile.backend", job.compile_backend, "--debug.seed", str(job.seed),
    )  # fmt: skip
    if job.variant.online:
        entry, config = "bench.stage2.online", ONLINE_CONFIG
        inputs = ("--training.dataset_path", str(data.tars), "--model.hf_assets_path", str(data.tokenizer),
                  "--encoder.t5_encoder", str(data.t5), "--encoder.clip_encoder", str(data.clip))  # fmt: skip
    else:
        entry, config = "stage2_train", PRODUCT_CONFIG
        inputs = (
            "--training.dataset_path", str(data), "--stage2.seed", str(job.seed),
            "--parallelism.data_parallel_replicate_degree", "1", "--parallelism.data_parallel_shard_degree", "-1",
            "--metrics.no-enable-tensorboard", "--metrics.no-enable-wandb", "--validation.no-enable",
            "--checkpoint.no-enable", "--lr_scheduler.warmup_steps", "30",
        )  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    return [*torchrun, "-m", entry, "--job.config_file", str(config), *common, *inputs, *job.variant.overrides(job.batch), *job.trainer_args]


def run(job: Job, data: Path | OnlineInputs, workdir: Path, timeout_s: float, cpu: bool) -> Outcome:
    name = f"{job.variant.name}-{job.image_size}px-b{job.batch}"
    dump = workdir / "runs" / name
    shutil.rmtree(dump, ignore_errors=True)
    dump.mkdir(parents=True)
    log = workdir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = command(job, dump, data)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled", "TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor-cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    env |= {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""} if cpu else {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    started = time.monotonic()
    with open(log, "w") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = None
    outcome = Outcome("ok", read_records(dump / METRICS_FILE), log, time.monotonic() - started)
    text = log.read_text(errors="replace")
    if rc is None:
        outcome.status, outcome.reason = "timeout", f"stopped after {timeout_s:.0f} s"
    elif rc != 0:
        full = any(r.get("memory/max_reserved(%)", 0) >= FULL_PCT for r in outcome.records)
        oom = full or any(marker in text for marker in OOM_MARKERS)
        outcome.status, outcome.reason = ("oom", "out of memory") if oom else ("error", _error_line(text))
    return outcome


def _stop(proc: subprocess.Popen) -> None:
    """End the torchrun this module started and its workers (their own process group)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _error_line(text: str) -> str:
    """The most telling line of a failed run's log: the last exception raised."""
    for line in reversed(text.splitlines()):
        line = line.removeprefix("[rank0]:").strip()
        if ("Error" in line or "Exception" in line) and not line.startswith(("File ", "raise")) and "ChildFailedError" not in line:
            return line[:300]
    return "see the log"


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            pass
    return records
