"""Whether a new Stage 2 run may start on a dataset Stage 1 may not have finished.

A run takes the stores committed when it starts and pins them in its checkpoint (``elastic_loader``),
so starting while Stage 1 still writes, or after some of its tasks failed, would silently train a
week on part of the data. A new run is refused then, naming what is missing, unless
``stage2.allow_incomplete_dataset`` says to train on what is committed. A resume is never refused
here: it trains on the stores its checkpoint pinned. The judgement is ``inspect_shards``' own:
heartbeats say which stores the input list needs and which tasks still run; without heartbeats (a
dataset not written by ``encode_array``) the extent is unknown and the run starts.
Preflight and the trainer's data loader both ask ``incomplete_dataset_refusal``.
"""

from __future__ import annotations

import re
from pathlib import Path

from torchtitan.config import JobConfig

from shared import contract
from shared.contract import ContractError
from shared.progress import summarise

_CHECKPOINT_STEP = re.compile(r"step-(\d+)")


def resumes_from_checkpoint(job_config: JobConfig) -> bool:
    """Whether TorchTitan will load a training checkpoint (with its sample order) from the dump folder."""
    checkpoint = job_config.checkpoint
    folder = Path(job_config.job.dump_folder) / checkpoint.folder
    if not checkpoint.enable or "dataloader" in checkpoint.exclude_from_loading or not folder.is_dir():
        return False
    return any(
        (match := _CHECKPOINT_STEP.fullmatch(path.name)) and int(match.group(1)) > 0 and (path / ".metadata").exists()
        for path in folder.iterdir()
    )


def incomplete_dataset_refusal(job_config: JobConfig) -> str | None:
    """Why this run must not start on its dataset yet, or ``None`` when it may."""
    if job_config.stage2.allow_incomplete_dataset or resumes_from_checkpoint(job_config):
        return None
    root = Path(job_config.training.dataset_path)
    try:
        summary = summarise(root)
    except (ContractError, OSError, ValueError) as exc:
        return f"{root}: cannot tell whether Stage 1 finished: {exc}"
    running = [str(task.index) for task in summary.live_tasks]
    if not summary.missing and not running and not summary.tasks_unreported:
        return None
    parts = [f"{summary.stores_committed} of {summary.stores_expected} stores committed"]
    if summary.missing:
        tars = ", ".join(name.removesuffix(contract.STORE_SUFFIX) for name in summary.missing)
        parts.append(f"missing the stores of input tars {tars}")
    if running:
        parts.append(f"Stage 1 tasks still running: {', '.join(running)}")
    if summary.tasks_unreported:
        parts.append(f"{summary.tasks_unreported} Stage 1 task(s) never reported")
    return (
        f"dataset {root} is incomplete ({'; '.join(parts)}): wait for Stage 1 (python -m shared.inspect_shards "
        f"{root}), or train on the committed stores with --stage2.allow_incomplete_dataset"
    )


def check_dataset_extent(job_config: JobConfig) -> None:
    refusal = incomplete_dataset_refusal(job_config)
    if refusal:
        raise ContractError(refusal)
