"""Requests a Stage 2 run cannot carry out, each refused in one line that names the fix.

Preflight asks these before torchrun starts (``slurm/train.sbatch`` stops there); the trainer asks the
same ones when it is started by hand (``python -m stage2_train``, ``torchrun … -m stage2_train``) and
raises ``Refusal``, which ``launch`` prints as one line instead of a traceback. Without them the
run would start and then die in a traceback (batch 0: ``ZeroDivisionError`` in the sampler; an empty
dataset: the sampler's ``ValueError``), or — worse — train something else than asked: TorchTitan skips
every checkpoint load, ``initial_load_path`` included, while ``[checkpoint] enable`` is false.
"""

from __future__ import annotations

from pathlib import Path

from torchtitan.config import JobConfig

from shared import contract


class Refusal(ValueError):
    """A request the run cannot carry out; its message is the one line a user sees."""


def config_file_refusal(config_file: str) -> str | None:
    """A ``--job.config_file`` that is not there (TorchTitan's parser would print its traceback)."""
    if Path(config_file).is_file():
        return None
    return (
        f"config file {config_file} not found (relative paths start at {Path.cwd()}): give --job.config_file "
        f"a TOML of configs/, e.g. configs/flux_schnell.toml"
    )


def batch_refusal(job_config: JobConfig) -> str | None:
    if job_config.training.local_batch_size >= 1:
        return None
    return f"training.local_batch_size {job_config.training.local_batch_size}: give each rank at least 1 sample per step"


def initial_load_refusal(job_config: JobConfig) -> str | None:
    """A checkpoint to start from is loaded or refused, never ignored."""
    checkpoint = job_config.checkpoint
    path = checkpoint.initial_load_path
    if not path:
        return None
    if not checkpoint.enable:
        return (
            f"checkpoint.initial_load_path {path} would not be loaded: TorchTitan loads no checkpoint while "
            f"[checkpoint] enable is false; add --checkpoint.enable"
        )
    if not Path(path).is_dir():
        return f"checkpoint.initial_load_path {path} is not a directory: give a checkpoint folder such as OUT/checkpoint/step-N"
    return None


def float8_refusal(job_config: JobConfig) -> str | None:
    """FP8 asked for on a machine that cannot run it (``float8.py`` refuses the same in the job)."""
    from stage2_train.model.float8 import CONVERTER_NAME, float8_problem  # torchao is optional: imported here

    if CONVERTER_NAME not in job_config.model.converters:
        return None
    return float8_problem(job_config)


def dataset_size_refusal(dataset: Path, samples: int, global_batch: int) -> str | None:
    """Too few samples for one step: an empty dataset, or one smaller than the global batch."""
    if samples >= global_batch:
        return None
    return (
        f"dataset {dataset} holds {samples:,} samples, fewer than one global batch of {global_batch:,}: "
        f"see python -m shared.inspect_shards {dataset} (why Stage 1 kept so few), or lower training.local_batch_size"
    )


def committed_samples(dataset: Path) -> int:
    """Samples in the dataset's committed stores, from their attributes (no array is opened)."""
    return sum(contract.read_store_attrs(path).num_samples for path in contract.committed_store_paths(dataset))


def job_refusals(job_config: JobConfig) -> list[str]:
    """What needs no GPU count or dataset to refuse: the checks the trainer makes before it builds anything."""
    checks = (batch_refusal, initial_load_refusal, float8_refusal)
    return [line for check in checks if (line := check(job_config))]


def refuse(line: str | None) -> None:
    """Raise the refusal, if there is one."""
    if line:
        raise Refusal(line)
