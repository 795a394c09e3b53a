"""One Stage 1 task, end to end: its tars -> one committed store each (plus the dataset's identity and
empty-prompt encodings).

Three activities overlap so the GPU never waits: feeder threads read tars (running into the next
one) and hand chunks to CPU worker processes; the main thread takes their results *in order*, encodes
batches and hands the tensors to writer processes, which compress, write and commit the stores.
``workers.stores_in_flight`` tars are encoded at once, their batches taking turns, because one store's
writer is slower than the GPU. Batches are consecutive valid samples of one tar, so what a store holds
depends only on the tar's content, never on timing or interleaving.
"""

from __future__ import annotations

import errno
import functools
import queue
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import numpy as np
import PIL
import torch

from shared import contract, encoders as assets_api, torch_storage
from shared.contract import ContractError, Identity
from shared.store import StoreWriter
from stage1_encode import sources
from stage1_encode.config import EncodeConfig
from stage1_encode.encode import BatchEncoder, Encoders, load_encoders
from stage1_encode.identity import build_identity, image_policy
from stage1_encode.prepare import Prepared, Workers
from stage1_encode.progress import Progress, Summary, slurm_job
from stage1_encode.tars import Skip, read_tar
from stage1_encode.tokenize import TokenizerFactory, tokenize
from stage1_encode.temporaries import remove_stale_temporaries
from stage1_encode.writer import WriterProcess, remove_orphaned_buffers

EncodersFactory = Callable[[torch.device, torch.dtype], Encoders]
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class Stage1Error(RuntimeError):
    """A failure the user can act on, reported as one line (identity mismatch, full disk, …)."""


@dataclass(frozen=True)
class Task:
    input: str
    """Directory of CC12M-format WebDataset tars, a glob, or an fsspec URL (``hf://datasets/…``)."""
    output: Path
    """The dataset directory."""
    assets: Path
    task_index: int = 0
    num_tasks: int = 1


def run_task(
    config: EncodeConfig,
    task: Task,
    encoders_factory: EncodersFactory | None = None,
    tokenizer_factory: TokenizerFactory | None = None,
    out: TextIO = sys.stdout,
) -> Summary:
    """Encode this task's tars into ``task.output``. Cheap checks (assets, inputs) run before anything
    starts; ``encoders_factory``/``tokenizer_factory`` replace loading from ``task.assets`` (benchmark)."""
    started = time.time()
    assets_api.check_assets(task.assets)
    tars = sources.task_tars(sources.list_tars(task.input), task.task_index, task.num_tasks)
    device, dtype, compile_ = resolve_compute(config)
    tokenizer_factory = tokenizer_factory or functools.partial(
        assets_api.load_tokenizers, task.assets, config.text.t5_max_length
    )
    workers = Workers(
        config.workers.resolved_decode(), tokenizer_factory, image_policy(config), config.text.t5_max_length
    )
    try:
        encoders = (encoders_factory or functools.partial(load_encoders, task.assets))(device, dtype)
        workers.wait_ready()  # they started while the encoders loaded
        encoder = BatchEncoder(encoders, config.batch, compile_, config.encoders.ae_channels_last and device.type == "cuda")
        identity, empty = identity_and_empty_prompt(config, encoders, encoder, tokenizer_factory(), dtype, compile_)
        write_identity(task, identity)
        _remove_stale(task, tars, config)
        write_empty_prompt(task.output, identity, empty)
        return _encode_tars(config, task, tars, workers, encoder, identity, started, out)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise Stage1Error(
                f"no space left (or file size limit) writing to {task.output}: {exc.strerror}. Nothing was "
                f"committed for the store being written and its temporary was removed; free space and rerun."
            ) from exc
        raise
    finally:
        workers.close()


def resolve_compute(config: EncodeConfig) -> tuple[torch.device, torch.dtype, bool]:
    """``auto`` settings: CUDA when visible (Slurm sets CUDA_VISIBLE_DEVICES="" without GPUs), bf16 and
    compiled there; fp32 eager on CPU."""
    settings = config.encoders
    if settings.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(settings.device)
    on_gpu = device.type == "cuda"
    dtype_name = settings.dtype if settings.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
    compile_ = settings.compile == "on" or (settings.compile == "auto" and on_gpu)
    return device, getattr(torch, dtype_name), compile_


def identity_and_empty_prompt(
    config: EncodeConfig, encoders: Any, encoder: BatchEncoder, tokenizers: tuple[Any, Any], dtype: torch.dtype, compile_: bool
) -> tuple[Identity, dict[str, torch.Tensor]]:
    """The dataset identity, and the empty caption's encodings whose widths it records."""
    empty = encode_empty_prompt(encoder, tokenizers, config.text.t5_max_length)
    identity = build_identity(
        config,
        encoders.hashes,
        encoders.ae_params,
        dims=(empty[contract.T5].shape[-1], empty[contract.CLIP].shape[-1]),
        compute={"dtype": str(dtype).removeprefix("torch."), "compile": compile_},
    )
    return identity, empty


def encode_empty_prompt(encoder: BatchEncoder, tokenizers: tuple[Any, Any], t5_max_length: int) -> dict[str, torch.Tensor]:
    t5, clip = tokenize(tokenizers, [""], t5_max_length)
    return encoder.encode_text(t5, clip)


def write_identity(task: Task, identity: Identity) -> None:
    try:
        contract.write_identity(task.output, identity, extra={contract.ASSETS_DIR_KEY: str(task.assets.resolve())})
    except ContractError as exc:
        differences = "; ".join(line.strip() for line in str(exc).splitlines()[1:])
        raise Stage1Error(
            f"{task.output} was encoded with another identity; refusing to add to it (differences: {differences[:500]}). "
            f"Use a new --output, or the settings and assets it was made with."
        ) from exc


def _remove_stale(task: Task, tars: list[sources.TarSource], config: EncodeConfig) -> None:
    """Temporaries of this task's stores (and of the empty prompt) that no live writer can own, and
    shared buffers of this host's killed tasks."""
    remove_orphaned_buffers()
    stale_after = config.run.stale_temporary_s
    remove_stale_temporaries(contract.shards_dir(task.output), {contract.store_name(t.name) for t in tars}, stale_after)
    remove_stale_temporaries(task.output, {contract.EMPTY_PROMPT_STORE}, stale_after)


def write_empty_prompt(dataset: Path, identity: Identity, empty: dict[str, torch.Tensor]) -> None:
    """Once per dataset; racing tasks compute the same bytes and the first commit wins."""
    path = dataset / contract.EMPTY_PROMPT_STORE
    if path.exists():
        return
    writer = StoreWriter(path, identity, contract.empty_prompt_specs(identity), "empty prompt", samples_per_shard=1)
    try:
        writer.append({name: torch_storage.to_storage(t, identity.storage_dtype) for name, t in empty.items()})
        writer.commit(skipped={})
    except BaseException:
        writer.abort()
        raise


def _encode_tars(
    config: EncodeConfig,
    task: Task,
    tars: list[sources.TarSource],
    workers: Workers,
    encoder: BatchEncoder,
    identity: Identity,
    started: float,
    out: TextIO,
) -> Summary:
    shards = contract.shards_dir(task.output)
    shards.mkdir(parents=True, exist_ok=True)
    progress = Progress(
        task.output, task.task_index, task.num_tasks, {contract.store_name(t.name): t.size for t in tars},
        config.run.progress_interval_s, out,
    )
    todo = []
    for tar in tars:
        if (shards / contract.store_name(tar.name)).exists():
            progress.already_done(contract.store_name(tar.name))
        else:
            todo.append(tar)
    progress.report()
    k = config.workers.stores_in_flight
    pending = _Pending(todo)
    slots: list[_Slot] = []
    try:
        for i in range(min(k, len(todo))):
            writer = WriterProcess(
                str(task.output), identity, config.storage.samples_per_shard, config.batch.size,
                _written_by(task, encoder), on_commit=lambda source, _attrs: progress.committed(contract.store_name(source)),
            )
            feeder = _Feeder(pending, workers, config.workers.chunk, max(1, config.workers.prefetch_chunks // k))
            slots.append(_Slot(feeder, writer, encoder, progress, config.batch.size))
        active = slots
        while active:  # one batch (or tar boundary) per slot in turn: every store's writer stays busy
            active = [slot for slot in active if slot.step()]
            progress.maybe_report()
        for slot in slots:
            slot.writer.close()
    except BaseException as exc:
        for slot in slots:
            slot.feeder.stop()
            slot.writer.abort()
        _remove_stale(task, todo, config)  # what the stopped writers left (this host, dead pids)
        progress.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    progress.finish("done")
    return progress.summary(time.time() - started)


class _Slot:
    """One tar at a time, batch by batch, from its own feeder to its own store writer.

    Several slots take turns on the GPU, so several stores are compressed and written at once; a tar's
    batches are still its own consecutive samples, so the bytes do not depend on the interleaving.
    """

    def __init__(
        self, feeder: "_Feeder", writer: WriterProcess, encoder: BatchEncoder, progress: Progress, batch_size: int
    ) -> None:
        self.feeder, self.writer = feeder, writer
        self._items = iter(feeder)
        self._encoder, self._progress, self._batch_size = encoder, progress, batch_size
        self._pending: list[Prepared] = []
        self._skips: Counter[str] = Counter()

    def step(self) -> bool:
        """Encode the next batch(es) of this slot's current tar, or close it; False once its tars are done."""
        self.writer.hand_over_copied()
        for kind, value in self._items:
            if kind == "start":
                self.writer.begin(value.name)
                self._progress.started(contract.store_name(value.name))
                self._skips = Counter()
            elif kind == "chunk":
                self._count_skips(Counter(r.reason for r in value if isinstance(r, Skip)))
                self._pending.extend(r for r in value if isinstance(r, Prepared))
                if len(self._pending) >= self._batch_size:
                    while len(self._pending) >= self._batch_size:
                        self._encode(self._pending[: self._batch_size])
                        self._pending = self._pending[self._batch_size :]
                    return True
            else:  # "end": the tar's last partial batch and tar-level skips, then commit
                if self._pending:
                    self._encode(self._pending)
                    self._pending = []
                self._count_skips(value)
                self.writer.commit(dict(self._skips))
                return True
        return False

    def _count_skips(self, reasons: Counter[str]) -> None:
        self._skips.update(reasons)
        self._progress.skipped(reasons)

    def _encode(self, samples: list[Prepared]) -> None:
        encoder = self._encoder
        tensors = encoder.encode_text(np.stack([s.t5_tokens for s in samples]), np.stack([s.clip_tokens for s in samples]))
        tensors |= encoder.encode_images(np.stack([s.image.pixels for s in samples]))
        meta = {
            contract.KEY: np.array([s.key for s in samples]),
            contract.CAPTION: np.array([s.caption for s in samples]),
            contract.ORIGINAL_SIZE: np.array([s.image.original_size for s in samples], dtype=np.int32),
            contract.CROP_BOX: np.array([s.image.crop_box for s in samples], dtype=np.int32),
        }
        self.writer.append(tensors, meta)
        self._progress.encoded(len(samples))


def _written_by(task: Task, encoder: BatchEncoder) -> dict[str, Any]:
    device = encoder.encoders.device
    return {
        "task": f"{task.task_index}/{task.num_tasks}",
        "slurm_job": slurm_job(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "pillow": PIL.__version__,
    }


class _Stopped(Exception):
    pass


class _Pending:
    """The tars no feeder has taken yet. Each feeder takes the next when it has read its last, so the
    slots end within about a tar of each other; which slot encodes a tar does not change its store."""

    def __init__(self, tars: list[sources.TarSource]) -> None:
        self._tars = iter(tars)
        self._lock = threading.Lock()

    def take(self) -> sources.TarSource | None:
        with self._lock:
            return next(self._tars, None)


class _Feeder:
    """Reads tars in order on a thread and submits chunks of samples to the workers; at most ``depth``
    chunks are in flight, which bounds memory while reading ahead into the next tar.

    Iterating yields ``("start", tar)``, ``("chunk", results)`` … and ``("end", tar-level skips)`` per tar.
    """

    def __init__(self, tars: _Pending, workers: Workers, chunk: int, depth: int) -> None:
        self._tars, self._workers, self._chunk = tars, workers, chunk
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tar-feeder", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        while True:
            kind, value = self._queue.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield kind, (value.result() if kind == "chunk" else value)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            for tar in iter(self._tars.take, None):
                self._put("start", tar)
                tar_skips: Counter[str] = Counter()
                chunk = []
                for item in read_tar(tar):
                    if isinstance(item, Skip):
                        tar_skips[item.reason] += 1
                        continue
                    chunk.append(item)
                    if len(chunk) == self._chunk:
                        self._put("chunk", self._workers.submit(chunk))
                        chunk = []
                if chunk:
                    self._put("chunk", self._workers.submit(chunk))
                self._put("end", tar_skips)
            self._put("done", None)
        except _Stopped:
            return
        except BaseException as exc:
            try:
                self._put("error", exc)
            except _Stopped:
                return

    def _put(self, kind: str, value: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put((kind, value), timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped
