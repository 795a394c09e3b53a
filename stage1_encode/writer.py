"""Writing stores in separate processes, so compression and checksums never hold the GPU back.

One process writing a store (blosc-zstd, SHA-256, CRC, finite check, commit) is slower than the
encoders on an H100 (``python -m bench.stage1_writer`` -> ``bench/results/stage1_writer_h100.jsonl``), and
threads do not add much (the GIL, and zarr runs every call on one event-loop thread), so each store
writer is a process of its own:

* encoded tensors go from the GPU straight into one of two shared-memory buffers per writer
  (page-locked when on CUDA, so the copy is an asynchronous DMA); the batch is handed to the writer
  at the task's next call, when the copy has long finished, so the task never waits for the GPU. The
  writer copies the batch out, frees the buffer and appends it through ``shared.store.StoreWriter``
  (buffer -> whole Zarr shards);
* a store's commit (verify, fsync, atomic rename) runs on a thread of the writer, so the next store's
  appends start at once;
* a failure removes the writer's temporary and comes back to the task as an exception (an ``OSError``
  keeps its errno, so a full disk is reported as such).
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import signal
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Callable

import numpy as np
import torch

from shared import contract, torch_storage
from shared.contract import ArraySpec, Identity, StoreAttrs
from shared.store import StoreWriter
from stage1_encode.cleanup import SHM_PREFIX

BUFFERS_PER_WRITER = 2
"""One buffer filling from the GPU while the writer copies the other out."""


# --------------------------------------------------------------------------- messages on the pipe


@dataclass(frozen=True)
class Begin:
    source: str
    fingerprint: dict[str, Any]


@dataclass(frozen=True)
class Append:
    buffer: int
    """Which shared buffer holds the batch's tensors."""
    samples: int
    meta: dict[str, np.ndarray]


@dataclass(frozen=True)
class Commit:
    skipped: dict[str, int]
    truncated_at_byte: int | None
    text_store: dict[str, str]
    """An image dataset's store: its text store (``StoreAttrs.text_store``); empty otherwise."""


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Freed:
    buffer: int


@dataclass(frozen=True)
class Committed:
    source: str
    attrs: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    errno: int | None
    strerror: str | None
    text: str


@dataclass(frozen=True)
class Closed:
    pass


ToWriter = Begin | Append | Commit | Close
FromWriter = Freed | Committed | Failed | Closed


class WriterProcess:
    """One store at a time: ``begin(source)``, ``append(tensors, meta)`` …, ``commit(skipped)``; ``close``
    waits for every commit. A writer failure is raised by the next call."""

    def __init__(
        self,
        dataset: str,
        identity: Identity,
        samples_per_shard: int,
        batch_size: int,
        written_by: dict[str, Any],
        on_commit: Callable[[str, StoreAttrs], None],
    ) -> None:
        self._storage_dtype = identity.storage_dtype
        self._on_commit = on_commit
        self._specs = {n: s for n, s in contract.array_specs(identity).items() if s.is_tensor}
        self._buffers: list[_SharedBatch] = []
        self._free = list(range(BUFFERS_PER_WRITER))
        self._held: list[ToWriter] = []
        """The last batch's ``Append`` (and what followed it), sent once its device-to-host copy has finished."""
        self._copied: torch.cuda.Event | None = None
        self._error: BaseException | None = None
        context = multiprocessing.get_context("spawn")
        try:
            for _ in range(BUFFERS_PER_WRITER):
                self._buffers.append(_SharedBatch.create(self._specs, batch_size))
            self._conn, child = context.Pipe()
            self._process = context.Process(
                target=_serve,
                args=(child, dataset, identity.to_dict(), samples_per_shard, batch_size, written_by,
                      [b.name for b in self._buffers]),
                name="stage1-store-writer",
                daemon=True,
            )
            self._process.start()
            child.close()
        except BaseException:
            for buffer in self._buffers:
                buffer.release()
            raise

    def begin(self, source: str, fingerprint: dict[str, Any]) -> None:
        self._post(Begin(source, fingerprint))

    def append(self, tensors: dict[str, torch.Tensor], meta: dict[str, np.ndarray]) -> None:
        """Start copying a batch's tensors (on any device) into a free buffer; the batch is handed over,
        with its metadata, once the copy has finished (``hand_over_copied`` or the next call). Small
        host tensors the buffers do not hold (compact text's ``t5_length``) go with the metadata."""
        self._release(wait=True)
        while not self._free:
            self._receive()
        index = self._free.pop()
        views = self._buffers[index].views
        n = len(next(iter(meta.values())))
        meta = meta | {name: torch_storage.to_storage(t, self._storage_dtype) for name, t in tensors.items() if name not in views}
        for name in views.keys() & tensors.keys():
            torch_storage.from_storage(views[name][:n], self._storage_dtype).copy_(tensors[name], non_blocking=True)
        self._held = [Append(index, n, meta)]
        if any(t.is_cuda for t in tensors.values()):
            self._copied = torch.cuda.Event()
            self._copied.record()

    def commit(
        self, skipped: dict[str, int], truncated_at_byte: int | None = None, text_store: dict[str, str] | None = None
    ) -> None:
        self._post(Commit(skipped, truncated_at_byte, text_store or {}))

    def hand_over_copied(self) -> None:
        """Send what waited for a device-to-host copy that has finished meanwhile (never waits)."""
        self._release(wait=False)

    def close(self) -> None:
        """Wait until every store handed over is committed; raise the writer's error, if any."""
        try:
            self._release(wait=True)
            self._send(Close())
            while not isinstance(self._receive(), Closed):
                pass
            self._raise()
        finally:
            self._shutdown()

    def abort(self) -> None:
        """Stop the writer at once; its temporary (same host, dead pid) is removed by ``cleanup``."""
        self._process.terminate()
        self._shutdown()

    def _shutdown(self) -> None:
        if self._copied is not None:
            self._copied.synchronize()  # no copy may still target a buffer about to be released
        self._held, self._copied = [], None
        self._conn.close()  # a writer still waiting for commands sees EOF, drops its store and exits
        self._process.join(timeout=60)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        for buffer in self._buffers:
            buffer.release()
        self._buffers = []

    def _post(self, message: ToWriter) -> None:
        """Send ``message`` now, or after the batch whose copy is still running (order is kept)."""
        if self._held:
            self._held.append(message)
        else:
            self._send(message)

    def _release(self, wait: bool) -> None:
        if not self._held or (self._copied is not None and not wait and not self._copied.query()):
            return
        if self._copied is not None:
            self._copied.synchronize()
        held, self._held, self._copied = self._held, [], None
        for message in held:
            self._send(message)

    def _send(self, message: ToWriter) -> None:
        while self._conn.poll():  # collect what the writer said meanwhile (commits, freed buffers, errors)
            self._receive()
        self._raise()
        try:
            self._conn.send(message)
        except ConnectionError:  # the writer is gone (BrokenPipeError, ConnectionResetError)
            self._writer_died()

    def _receive(self) -> FromWriter:
        try:
            message = self._conn.recv()
        except (EOFError, ConnectionError):
            self._writer_died()
        match message:
            case Freed(buffer):
                self._free.append(buffer)
            case Committed(source, attrs):
                self._on_commit(source, StoreAttrs.from_dict(attrs))
            case Failed(errno, strerror, text):
                self._error = self._error or (OSError(errno, strerror) if errno else RuntimeError(text))
        return message

    def _writer_died(self) -> None:
        self._process.join(timeout=5)
        self._error = self._error or RuntimeError(f"store writer process died (exit code {self._process.exitcode})")
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


class _SharedBatch:
    """Shared memory holding one batch of every tensor array, in storage layout (numpy views by name)."""

    def __init__(self, shm: SharedMemory, specs: dict[str, ArraySpec], batch_size: int, pinned: bool) -> None:
        self.shm, self.name, self._pinned = shm, shm.name, pinned
        self.views: dict[str, np.ndarray] = {}
        offset = 0
        for name, spec in specs.items():
            shape = (batch_size, *spec.shape)
            self.views[name] = np.ndarray(shape, dtype=spec.dtype, buffer=shm.buf, offset=offset)
            offset += self.views[name].nbytes

    @staticmethod
    def nbytes(specs: dict[str, ArraySpec], batch_size: int) -> int:
        return sum(batch_size * int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in specs.values())

    @classmethod
    def create(cls, specs: dict[str, ArraySpec], batch_size: int) -> "_SharedBatch":
        name = f"{SHM_PREFIX}_{os.getpid()}_{secrets.token_hex(4)}"
        shm = SharedMemory(name=name, create=True, size=cls.nbytes(specs, batch_size))
        pinned = torch.cuda.is_available() and _cuda_host_register(shm, True)
        return cls(shm, specs, batch_size, pinned)

    @classmethod
    def attach(cls, name: str, specs: dict[str, ArraySpec], batch_size: int) -> "_SharedBatch":
        # Spawned by multiprocessing, this process shares the creator's resource tracker: the creator
        # unlinks the memory, and the tracker does if the creator is killed.
        return cls(SharedMemory(name=name), specs, batch_size, pinned=False)

    def release(self, unlink: bool = True) -> None:
        self.views = {}
        if self._pinned:
            _cuda_host_register(self.shm, False)
        self.shm.close()
        if unlink:
            self.shm.unlink()


def _cuda_host_register(shm: SharedMemory, register: bool) -> bool:
    """Page-lock (or release) shared memory for the GPU: device-to-host copies then run at DMA speed."""
    address = np.frombuffer(shm.buf, dtype=np.uint8).ctypes.data
    cudart = torch.cuda.cudart()
    status = cudart.cudaHostRegister(address, shm.size, 0) if register else cudart.cudaHostUnregister(address)
    return int(status) == 0


# --------------------------------------------------------------------------- the writer process


def _serve(
    conn: Connection, dataset: str, identity: dict, samples_per_shard: int, batch_size: int,
    written_by: dict[str, Any], buffer_names: list[str],
) -> None:
    """The writer process: one ``StoreWriter`` appended to at a time, commits on a thread.

    One function rather than a class: its few closures share the process's state (the pipe's lock, the
    failure flag, the pending commits), and the loop reads top to bottom as the protocol it serves.
    """
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past RLIMIT_FSIZE: EFBIG, reported as a full disk
    ident = Identity.from_dict(identity)
    specs = contract.array_specs(ident)
    buffers = [_SharedBatch.attach(n, {k: s for k, s in specs.items() if s.is_tensor}, batch_size) for n in buffer_names]
    lock = threading.Lock()
    committer = ThreadPoolExecutor(1, thread_name_prefix="store-commit")
    commits: list[Future] = []
    store: StoreWriter | None = None
    failed = threading.Event()

    def send(message: FromWriter) -> None:
        with lock:
            conn.send(message)

    def fail(exc: BaseException) -> None:
        failed.set()
        errno = exc.errno if isinstance(exc, OSError) else None
        send(Failed(errno, getattr(exc, "strerror", None), "".join(traceback.format_exception(exc))))

    def commit(writer: StoreWriter, skipped: dict[str, int], truncated_at_byte: int | None, text_store: dict[str, str]) -> None:
        try:
            attrs = writer.commit(skipped, truncated_at_byte, text_store)
        except BaseException as exc:
            writer.abort()
            fail(exc)
            return
        send(Committed(writer.source, attrs.to_dict()))

    while True:
        try:
            message: ToWriter = conn.recv()
        except EOFError:  # the task is gone: drop the store being appended to
            if store is not None:
                store.abort()
            break
        if isinstance(message, Close):
            wait(commits)
            send(Closed())
            break
        if failed.is_set():
            continue
        try:
            match message:
                case Begin(source, fingerprint):
                    path = contract.shards_dir(dataset) / contract.store_name(source)
                    store = StoreWriter(path, ident, specs, source, samples_per_shard, written_by, fingerprint)
                case Append(index, n, meta):
                    batch = {name: view[:n].copy() for name, view in buffers[index].views.items()}
                    send(Freed(index))
                    store.append(batch | meta)
                case Commit(skipped, truncated_at_byte, text_store):
                    commits.append(committer.submit(commit, store, skipped, truncated_at_byte, text_store))
                    store = None
        except BaseException as exc:
            if store is not None:
                store.abort()
                store = None
            fail(exc)
    committer.shutdown()
    for buffer in buffers:
        buffer.release(unlink=False)
    conn.close()
