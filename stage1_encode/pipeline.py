"""One Stage 1 task, end to end: its tars -> one committed store each (plus the dataset's identity and
empty-prompt encodings).

Cheap checks first (output, assets, inputs, and whether any tar needs encoding at all), then the workers start while the encoders load; the dataset is
set up (``dataset_setup``) and the tars are encoded (``scheduler``). A full disk becomes one
actionable line (``Stage1Error``).
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import torch

from shared import contract, pairing
from stage1_encode import asset_loading, sources
from stage1_encode.captions import TokenizerFactory
from stage1_encode.cleanup import remove_stale
from stage1_encode.config import EncodeConfig
from stage1_encode.dataset_setup import identity_and_empty_prompt, resolve_compute, write_empty_prompt
from stage1_encode.encode import BatchEncoder, Encoders, load_encoders
from stage1_encode.errors import Stage1Error
from stage1_encode.identity import compute_record, image_policy, paired_identity, register_dataset, same_settings, text_mode
from stage1_encode.prepare import Workers
from stage1_encode.progress import Progress, TaskResult
from stage1_encode.scheduler import encode_tars, nothing_to_encode
from stage1_encode.text_from import load_image_encoder, open_text_dataset

EncodersFactory = Callable[[torch.device, torch.dtype], Encoders]
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


@dataclass(frozen=True)
class Task:
    input: str
    """Directory of CC12M-format WebDataset tars, a glob, or an fsspec URL (``hf://datasets/…``)."""
    output: Path
    """The dataset directory."""
    assets: Path
    task_index: int = 0
    num_tasks: int = 1
    text_from: Path | None = None
    """A text dataset to take ``t5``/``clip`` from (the resolution ladder): only the AE runs."""


def run_task(
    config: EncodeConfig,
    task: Task,
    encoders_factory: EncodersFactory | None = None,
    tokenizer_factory: TokenizerFactory | None = None,
    out: TextIO = sys.stdout,
) -> TaskResult:
    """Encode this task's tars into ``task.output``. Cheap checks (assets, inputs) run before anything
    starts; ``encoders_factory``/``tokenizer_factory`` replace loading from ``task.assets`` (benchmark)."""
    started = time.time()
    check_output(task.output)
    asset_loading.check_assets(task.assets)
    tars = sources.task_tars(sources.list_tars(task.input), task.task_index, task.num_tasks)
    text = open_text_dataset(task.text_from, tars, config.storage.dtype, text_mode(config)) if task.text_from else None
    task_of = (task.task_index, task.num_tasks)
    progress = Progress(
        task.output, *task_of, {contract.store_name(t.name): t.size for t in tars}, config.run.progress_interval_s, out
    )
    device, dtype, compile_ = resolve_compute(config)
    if nothing_to_encode(task.output, tars, stores_text=text is None) and same_settings(
        config, compute_record(dtype, compile_), contract.read_identity(task.output)
    ):  # no weights loaded for nothing
        return encode_tars(config, task.output, task_of, tars, None, None, None, started, progress, text)
    progress.starting()  # inspect_shards: "starting" from now, not "not a dataset" until the encoders load
    with progress.failed_on_error():
        tokenizer_factory = tokenizer_factory or functools.partial(
            asset_loading.load_tokenizers, task.assets, config.text.t5_max_length
        )
        workers = Workers(
            config.workers.resolved_decode(), tokenizer_factory, image_policy(config), config.text.t5_max_length
        )
        try:
            default_factory = load_image_encoder if text else load_encoders
            encoders = (encoders_factory or functools.partial(default_factory, task.assets))(device, dtype)
            workers.wait_ready()  # they started while the encoders loaded
            channels_last = config.encoders.ae_channels_last and device.type == "cuda"
            encoder = BatchEncoder(encoders, config.batch, compile_, channels_last, config.text.compact)
            if text:  # the empty prompt, like every text encoding, is the text dataset's
                identity = paired_identity(config, encoders, text, compute_record(dtype, compile_))
                register_dataset(task.output, task.assets, identity, pairing.location_record(task.output, text.root))
            else:
                identity, empty = identity_and_empty_prompt(
                    config, encoders, encoder, tokenizer_factory(), dtype, compile_
                )
                register_dataset(task.output, task.assets, identity)
            remove_stale(task.output, {contract.store_name(t.name) for t in tars}, config.run.stale_temporary_s)
            if not text:
                write_empty_prompt(task.output, identity, empty)
            return encode_tars(config, task.output, task_of, tars, workers, encoder, identity, started, progress, text)
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise Stage1Error(
                    f"no space left (or file size limit) writing to {task.output}: {exc.strerror}. Nothing was "
                    f"committed for the store being written and its temporary was removed; free space and rerun."
                ) from exc
            raise
        finally:
            workers.close()


def check_output(output: Path) -> None:
    """``--output`` must be a directory (new, or the dataset) this task may write: checked before any
    weights load, not minutes later when the first file is written."""
    existing = next((p for p in (output, *output.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise Stage1Error(f"--output {output}: {existing} is a file; give a directory (new, or the dataset to add to)")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise Stage1Error(f"--output {output}: {existing} is not writable by this user; give a directory you can write")
