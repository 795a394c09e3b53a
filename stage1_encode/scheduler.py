"""The scheduler of one Stage 1 task: its tars -> one committed store each, with the GPU never waiting.

Three activities overlap: feeder threads read tars (running into the next one) and hand chunks to CPU
worker processes; the main thread takes their results *in order*, encodes batches and hands the
tensors to writer processes, which compress, write and commit the stores. ``workers.stores_in_flight``
tars are encoded at once (one ``_Slot`` each), their batches taking turns, because one store's writer
is slower than the GPU. Batches are consecutive valid samples of one tar, so what a store holds depends
only on the tar's content, never on timing or interleaving.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import PIL
import torch

from shared import contract
from shared.contract import Identity
from shared.pairing import TextDataset
from stage1_encode.cleanup import remove_stale
from stage1_encode.config import EncodeConfig
from stage1_encode.encode import BatchEncoder
from stage1_encode.prepare import Prepared, Workers
from stage1_encode.progress import Progress, TaskResult, slurm_job
from stage1_encode.skips import Skip, SkipReason
from stage1_encode.sources import TarSource
from stage1_encode.tars import read_tar
from stage1_encode.text_from import TextRows
from stage1_encode.writer import WriterProcess


def nothing_to_encode(dataset: Path, tars: list[TarSource], stores_text: bool) -> bool:
    """Whether every tar has its committed store, made from this version of the tar, and the dataset
    its identity (and empty prompt): a rerun's idle task, which then loads no encoder and no tokenizer."""
    if not (dataset / contract.DATASET_FILE).is_file():
        return False
    if stores_text and not (dataset / contract.EMPTY_PROMPT_STORE).is_dir():
        return False
    stores_dir = contract.shards_dir(dataset)
    return all(
        (store := stores_dir / contract.store_name(tar.name)).exists()
        and not _source_changed(_committed_attrs(store), tar.fingerprint().to_dict())
        for tar in tars
    )


def encode_tars(
    config: EncodeConfig,
    dataset: Path,
    task: tuple[int, int],
    tars: list[TarSource],
    workers: Workers | None,
    encoder: BatchEncoder | None,
    identity: Identity | None,
    started: float,
    progress: Progress,
    text: TextDataset | None = None,
) -> TaskResult:
    """Encode ``tars`` (those of array task ``task`` = (index, count)) into stores of ``dataset``;
    tars whose store is committed already are counted, not encoded again (``None`` workers, encoder and
    identity: ``nothing_to_encode`` said so). With ``text`` (``--text-from``) only the images are encoded,
    each sample paired with its row in ``text``."""
    stores_dir = contract.shards_dir(dataset)
    stores_dir.mkdir(parents=True, exist_ok=True)
    fingerprints = {t.name: t.fingerprint().to_dict() for t in tars}
    todo = []
    for tar in tars:
        store = stores_dir / contract.store_name(tar.name)
        attrs = _committed_attrs(store)
        if _source_changed(attrs, fingerprints[tar.name]):
            progress.source_changed(store.name)
            todo.append(tar)
        elif store.exists():
            progress.already_done(store.name, attrs)
        else:
            todo.append(tar)
    progress.report()
    k = config.workers.stores_in_flight
    pending = _Pending(todo)
    slots: list[_Slot] = []
    try:
        for _ in range(min(k, len(todo))):
            writer = WriterProcess(
                str(dataset), identity, config.storage.samples_per_shard, config.batch.size,
                _written_by(task, encoder), on_commit=lambda source, attrs: progress.committed(contract.store_name(source), attrs),
            )
            feeder = _Feeder(pending, workers, config.workers.chunk, max(1, config.workers.prefetch_chunks // k), progress.read)
            slots.append(_Slot(feeder, writer, encoder, progress, config.batch.size, fingerprints, text))
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
        # what the stopped writers left (this host, dead pids)
        remove_stale(dataset, {contract.store_name(t.name) for t in todo}, config.run.stale_temporary_s)
        progress.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    progress.finish("done")
    return progress.result(time.time() - started)


# --------------------------------------------------------------------------- what a feeder yields


@dataclass(frozen=True)
class TarStart:
    tar: TarSource


@dataclass(frozen=True)
class Chunk:
    """One chunk of a tar's samples as the workers prepared them: one result per sample, in order."""

    results: list[Prepared | Skip]


@dataclass(frozen=True)
class TarEnd:
    skips: Counter[str]
    """Tar-level skips (duplicate keys, a truncated tar), by reason."""
    truncated_at_byte: int | None
    """Where a damaged tar broke off (None: the tar is whole)."""


FeederItem = TarStart | Chunk | TarEnd


class _Slot:
    """One tar at a time, batch by batch, from its own feeder to its own store writer.

    Several slots take turns on the GPU, so several stores are compressed and written at once; a tar's
    batches are still its own consecutive samples, so the bytes do not depend on the interleaving.
    """

    def __init__(
        self, feeder: _Feeder, writer: WriterProcess, encoder: BatchEncoder, progress: Progress, batch_size: int,
        fingerprints: dict[str, dict[str, Any]],
        text: TextDataset | None,
    ) -> None:
        self.feeder, self.writer = feeder, writer
        self._fingerprints = fingerprints
        self._items = iter(feeder)
        self._encoder, self._progress, self._batch_size = encoder, progress, batch_size
        self._text = text
        self._text_rows: TextRows | None = None
        """The current tar's text store, with ``text``."""
        self._pending: list[Prepared] = []
        self._skips: Counter[str] = Counter()

    def step(self) -> bool:
        """Encode the next batch(es) of this slot's current tar, or close it; False once its tars are done."""
        self.writer.hand_over_copied()
        for item in self._items:
            match item:
                case TarStart(tar):
                    self.writer.begin(tar.name, self._fingerprints[tar.name])
                    self._progress.started(contract.store_name(tar.name))
                    self._skips = Counter()
                    self._text_rows = TextRows.of(self._text, tar.name) if self._text else None
                case Chunk(results):
                    results = self._text_rows.split(results) if self._text_rows else results
                    self._count_skips(Counter(r.reason for r in results if isinstance(r, Skip)))
                    self._pending.extend(r for r in results if isinstance(r, Prepared))
                    if len(self._pending) >= self._batch_size:
                        while len(self._pending) >= self._batch_size:
                            self._encode(self._pending[: self._batch_size])
                            self._pending = self._pending[self._batch_size :]
                        return True
                case TarEnd(skips, truncated_at_byte):  # the last partial batch and tar-level skips, then commit
                    if self._pending:
                        self._encode(self._pending)
                        self._pending = []
                    self._count_skips(skips)
                    self.writer.commit(
                        dict(self._skips), truncated_at_byte, self._text_rows.record if self._text_rows else None
                    )
                    return True
        return False

    def _count_skips(self, reasons: Counter[str]) -> None:
        self._skips.update(reasons)
        self._progress.skipped(reasons)

    def _encode(self, samples: list[Prepared]) -> None:
        encoder = self._encoder
        pixels = np.stack([s.image.pixels for s in samples])
        if self._text_rows:  # --text-from: the AE alone; the text is the text store's row of the same key
            tensors = encoder.encode_images(pixels)
            paired = {contract.TEXT_INDEX: self._text_rows.indices(samples)}
        else:
            tensors = encoder.encode_text(np.stack([s.t5_tokens for s in samples]), np.stack([s.clip_tokens for s in samples]))
            tensors |= encoder.encode_images(pixels)
            paired = {}
        meta = paired | {
            contract.KEY: np.array([s.key for s in samples]),
            contract.CAPTION: np.array([s.caption for s in samples]),
            contract.ORIGINAL_SIZE: np.array([s.image.original_size for s in samples], dtype=np.int32),
            contract.CROP_BOX: np.array([s.image.crop_box for s in samples], dtype=np.int32),
        }
        self.writer.append(tensors, meta)
        self._progress.encoded(len(samples))


def _committed_attrs(store: Path) -> contract.StoreAttrs | None:
    """A committed store's attributes; None when there is none, or they cannot be read (kept as it is:
    ``inspect_shards`` names such a store)."""
    try:
        return contract.read_store_attrs(store)
    except (OSError, ValueError, contract.ContractError):
        return None


def _source_changed(attrs: contract.StoreAttrs | None, fingerprint: dict[str, Any]) -> bool:
    """A committed store made from another version of its tar (one that recorded no fingerprint: no)."""
    return attrs is not None and bool(attrs.source_fingerprint) and attrs.source_fingerprint != fingerprint


def _written_by(task: tuple[int, int], encoder: BatchEncoder) -> dict[str, Any]:
    device = encoder.encoders.device
    return {
        "task": f"{task[0]}/{task[1]}",
        "slurm_job": slurm_job(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "pillow": PIL.__version__,
    }


# --------------------------------------------------------------------------- feeders


class _Stopped(Exception):
    pass


@dataclass(frozen=True)
class _Submitted:
    """A chunk on its way through the workers (the queue holds it until the slot takes it)."""

    results: Future[list[Prepared | Skip]]


@dataclass(frozen=True)
class _Done:
    pass


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class _Pending:
    """The tars no feeder has taken yet. Each feeder takes the next when it has read its last, so the
    slots end within about a tar of each other; which slot encodes a tar does not change its store."""

    def __init__(self, tars: list[TarSource]) -> None:
        self._tars = iter(tars)
        self._lock = threading.Lock()

    def take(self) -> TarSource | None:
        with self._lock:
            return next(self._tars, None)


class _Feeder:
    """Reads tars in order on a thread and submits chunks of samples to the workers; at most ``depth``
    chunks are in flight, which bounds memory while reading ahead into the next tar.

    Iterating yields ``TarStart``, ``Chunk`` … and ``TarEnd`` per tar.
    """

    def __init__(
        self, tars: _Pending, workers: Workers, chunk: int, depth: int, on_read: Callable[[str, int], None]
    ) -> None:
        self._tars, self._workers, self._chunk, self._on_read = tars, workers, chunk, on_read
        self._queue: queue.Queue[FeederItem | _Submitted | _Done | _Failed] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tar-feeder", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[FeederItem]:
        while True:
            match self._queue.get():
                case _Done():
                    return
                case _Failed(error):
                    raise error
                case _Submitted(results):
                    yield Chunk(results.result())
                case item:
                    yield item

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            for tar in iter(self._tars.take, None):
                self._put(TarStart(tar))
                tar_skips: Counter[str] = Counter()
                truncated_at_byte = None
                chunk = []
                for item in read_tar(tar):
                    if isinstance(item, Skip):
                        tar_skips[item.reason] += 1
                        if item.reason == SkipReason.TRUNCATED_TAR:
                            truncated_at_byte = item.at_byte
                        continue
                    self._on_read(contract.store_name(tar.name), item.end_byte)
                    chunk.append(item)
                    if len(chunk) == self._chunk:
                        self._put(_Submitted(self._workers.submit(chunk)))
                        chunk = []
                if chunk:
                    self._put(_Submitted(self._workers.submit(chunk)))
                self._put(TarEnd(tar_skips, truncated_at_byte))
            self._put(_Done())
        except _Stopped:
            return
        except BaseException as exc:
            try:
                self._put(_Failed(exc))
            except _Stopped:
                return

    def _put(self, item: FeederItem | _Submitted | _Done | _Failed) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped
