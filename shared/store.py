"""Write and read one Zarr v3 store of the stage contract.

``StoreWriter`` buffers samples and writes each Zarr shard in one call (a partial shard write is a
read-modify-write of the whole shard file), keeps a running checksum per array, and on ``commit``
re-reads and verifies everything before renaming the temporary directory to its final name. A
killed writer leaves only a hidden temporary, which the next run removes.

``StoreReader`` opens a committed store, trusts nothing it cannot check (schema version, identity
digest, shard files present) and returns samples as numpy arrays.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zarr

from shared import checksums, contract
from shared.atomic import fsync_dir, fsync_tree
from shared.contract import ArraySpec, ContractError, Identity, StoreAttrs


class StoreWriter:
    """Writes one store under a temporary name; ``commit`` verifies and renames it into place."""

    def __init__(
        self,
        final_path: str | os.PathLike,
        identity: Identity,
        specs: dict[str, ArraySpec],
        source: str,
        samples_per_shard: int,
        written_by: dict[str, Any] | None = None,
        source_fingerprint: dict[str, Any] | None = None,
    ) -> None:
        self.final_path = Path(final_path)
        self.source_fingerprint = source_fingerprint or {}
        self.identity = identity
        self.specs = specs
        self.source = source
        self.samples_per_shard = samples_per_shard
        token = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.tmp_path = self.final_path.with_name(contract.temporary_name(self.final_path.name, token))
        self._replaced_path = self.final_path.with_name(contract.temporary_name(self.final_path.name, token + "old"))
        self.written_by = {"host": socket.gethostname(), "pid": os.getpid(), **(written_by or {})}
        self._buffer: dict[str, list[np.ndarray]] = {name: [] for name in specs}
        self._buffered = 0
        self._written = 0
        self._hashers = {name: hashlib.sha256() for name in specs}
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="store-check")
        self._group = zarr.open_group(self.tmp_path, mode="w-")
        self._arrays = {name: self._create(spec) for name, spec in specs.items()}

    def _create(self, spec: ArraySpec) -> zarr.Array:
        dtype = str if spec.dtype == "str" else spec.dtype
        if spec.dtype == "str":
            # Small per-sample metadata: one chunk per Zarr shard's worth of samples, no sharding.
            layout = {"chunks": (self.samples_per_shard,)}
        else:
            layout = {"chunks": (1, *spec.shape), "shards": (self.samples_per_shard, *spec.shape)}
        array = self._group.create_array(
            spec.name,
            shape=(0, *spec.shape),
            dtype=dtype,
            fill_value="" if spec.dtype == "str" else 0,
            config={"write_empty_chunks": True},
            attributes={"logical_dtype": spec.logical_dtype, "doc": contract.ARRAY_DOCS.get(spec.name, "")},
            **layout,
            **chunk_codecs(spec),
        )
        return array

    @property
    def num_samples(self) -> int:
        return self._written + self._buffered

    def append(self, batch: dict[str, np.ndarray]) -> None:
        """Add a batch of samples (every array, same leading length)."""
        lengths = {name: len(batch[name]) for name in self.specs}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays of one batch differ in length: {lengths}")
        n = next(iter(lengths.values()))
        for name, spec in self.specs.items():
            values = np.asarray(batch[name])
            if values.shape[1:] != spec.shape:
                raise ContractError(f"{name}: sample shape {values.shape[1:]} != contract {spec.shape}")
            self._buffer[name].append(values)
        self._buffered += n
        while self._buffered >= self.samples_per_shard:
            self._flush(self.samples_per_shard)

    def _flush(self, count: int) -> None:
        """Write the first ``count`` buffered samples as whole Zarr shards, in one call per array.

        The finite check and the checksums run on a thread while zarr compresses and writes: both
        release the GIL, and done in turn they cost a writer a fifth of its time. A non-finite block is
        thus written to the temporary before the error is raised; the temporary is never committed.
        """
        start, stop = self._written, self._written + count
        blocks = {}
        for name in self._arrays:
            merged = np.concatenate(self._buffer[name]) if len(self._buffer[name]) > 1 else self._buffer[name][0]
            blocks[name], rest = merged[:count], merged[count:]
            self._buffer[name] = [rest] if len(rest) else []
        checked = self._checker.submit(self._check_and_hash, blocks, start, stop)
        try:
            for name, array in self._arrays.items():
                array.resize((stop, *array.shape[1:]))
                array[start:stop] = blocks[name]
        finally:
            checked.result()
        self._written = stop
        self._buffered -= count

    def _check_and_hash(self, blocks: dict[str, np.ndarray], start: int, stop: int) -> None:
        for name, block in blocks.items():
            if self.specs[name].is_tensor and not _all_finite(block, self.identity.storage_dtype):
                raise ContractError(f"{name}: non-finite values in samples {start}..{stop - 1} of {self.source}")
            checksums.checksum_update(self._hashers[name], block)

    def commit(
        self, skipped: dict[str, int], truncated_at_byte: int | None = None, text_store: dict[str, str] | None = None
    ) -> StoreAttrs:
        """Flush, verify, fsync and rename into place.

        The checksums were taken from the very blocks handed to zarr, so the commit check is
        structural (``verify_store(deep=False)``): a full re-read costs as much as the write itself
        and would halve Stage 1's throughput; ``inspect_shards --verify`` does it on demand.

        Returns the committed attributes. If another writer committed the same store from the same
        source first, this one's temporary is removed and the winner's attributes are returned; a
        committed store made from another version of the source is replaced (``_replace``).
        """
        if self._buffered:
            self._flush(self._buffered)
        self._checker.shutdown()
        checksums = {name: "sha256:" + h.hexdigest() for name, h in self._hashers.items()}
        attrs = StoreAttrs(
            source=self.source,
            identity_digest=self.identity.digest(),
            num_samples=self._written,
            samples_per_shard=self.samples_per_shard,
            skipped=dict(sorted(skipped.items())),
            checksums=checksums,
            stored_bytes=_tree_bytes(self.tmp_path),
            raw_bytes=sum(_raw_bytes(spec, self._written) for spec in self.specs.values()),
            written_by={**self.written_by, "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            source_fingerprint=self.source_fingerprint,
            truncated_at_byte=truncated_at_byte,
            text_store=text_store or {},
        )
        self._group.attrs.put(attrs.to_dict())
        problems = verify_store(self.tmp_path, self.identity, self.specs, attrs, deep=False)
        if problems:
            raise ContractError(f"verification of {self.tmp_path} failed: {problems}")
        fsync_tree(self.tmp_path)
        try:
            os.rename(self.tmp_path, self.final_path)
        except OSError:
            if not self.final_path.exists():
                raise
            existing = contract.read_store_attrs(self.final_path)
            if existing.source_fingerprint == self.source_fingerprint:
                # Another writer won the race with the same input; its store is complete by definition.
                shutil.rmtree(self.tmp_path, ignore_errors=True)
                return existing
            self._replace()
        fsync_dir(self.final_path.parent)
        return attrs

    def _replace(self) -> None:
        """Put this store in the place of one made from another version of the source.

        The old store is first renamed to a hidden temporary (readers never see a mixed store; a kill
        between the renames leaves no store under the final name, which a rerun encodes again), then
        this one is renamed into place and the old one removed.
        """
        os.rename(self.final_path, self._replaced_path)
        os.rename(self.tmp_path, self.final_path)
        shutil.rmtree(self._replaced_path, ignore_errors=True)

    def abort(self) -> None:
        self._checker.shutdown(cancel_futures=True)
        shutil.rmtree(self.tmp_path, ignore_errors=True)


def verify_store(
    path: str | os.PathLike,
    identity: Identity,
    specs: dict[str, ArraySpec],
    attrs: StoreAttrs | None = None,
    on_block: Callable[[str, np.ndarray], None] | None = None,
    deep: bool = True,
) -> list[str]:
    """Check a store against its recorded count, dtypes and checksums.

    Returns a list of problems (empty when the store is whole). ``deep`` re-reads every array shard
    by shard (memory bounded by one shard) and recomputes its checksum; ``on_block(name, block)``
    sees every block read, so ``inspect_shards --verify`` gathers statistics in the same pass.
    Without ``deep``, tensor arrays get a structural check — shapes, dtypes, every shard file
    present, and one chunk per shard file decoded (which validates the shard index and a CRC) —
    while the small metadata arrays are still re-hashed in full.
    """
    problems: list[str] = []
    try:
        attrs = attrs or contract.read_store_attrs(path)
        group = zarr.open_group(path, mode="r")
    except Exception as exc:  # unreadable metadata is a finding, not a crash
        return [f"unreadable store metadata: {exc}"]
    if attrs.identity_digest != identity.digest():
        problems.append(f"identity digest {attrs.identity_digest} != dataset's {identity.digest()}")
    for name, spec in specs.items():
        try:
            array = group[name]
        except KeyError:
            problems.append(f"{name}: array missing")
            continue
        if array.shape != (attrs.num_samples, *spec.shape):
            problems.append(f"{name}: shape {array.shape} != {(attrs.num_samples, *spec.shape)}")
            continue
        if not _dtype_matches(array.dtype, spec):
            problems.append(f"{name}: dtype {array.dtype} != contract {spec.dtype}")
            continue
        missing = _missing_shard_files(Path(path), array, spec, attrs)
        if missing:
            problems.append(f"{name}: shard files missing: {missing}")
            continue
        if spec.is_tensor and not deep:
            problems.extend(_spot_check(array, name, attrs, identity.storage_dtype))
            continue
        hasher = hashlib.sha256()
        start = 0
        try:
            for start in range(0, attrs.num_samples, attrs.samples_per_shard):
                block = array[start : start + attrs.samples_per_shard]
                if spec.is_tensor and not _all_finite(block, identity.storage_dtype):
                    problems.append(f"{name}: non-finite values in {_samples(start, attrs)}")
                checksums.checksum_update(hasher, block)
                if on_block is not None:
                    on_block(name, block)
        except Exception as exc:
            problems.append(f"{name}: unreadable in {_samples(start, attrs)} ({type(exc).__name__}: {exc})")
            continue
        actual = "sha256:" + hasher.hexdigest()
        if actual != attrs.checksums.get(name):
            problems.append(f"{name}: checksum {actual[:20]}… != recorded {str(attrs.checksums.get(name))[:20]}…")
    return problems


class StoreReader:
    """Random access to the samples of one committed store."""

    def __init__(self, path: str | os.PathLike, identity: Identity, specs: dict[str, ArraySpec]) -> None:
        self.path = Path(path)
        self.attrs = contract.read_store_attrs(path)
        if self.attrs.identity_digest != identity.digest():
            raise ContractError(f"{path}: identity {self.attrs.identity_digest} != dataset's {identity.digest()}")
        self.specs = specs
        self.storage_dtype = identity.storage_dtype
        self._group = zarr.open_group(path, mode="r")
        self._arrays = {name: self._group[name] for name in specs}
        for name, spec in specs.items():
            if self._arrays[name].shape != (self.attrs.num_samples, *spec.shape):
                raise ContractError(f"{path}: {name} has shape {self._arrays[name].shape}")

    def __len__(self) -> int:
        return self.attrs.num_samples

    def read(self, index: int, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """One sample's arrays. A missing shard file or a failed chunk CRC raises ``ContractError``."""
        out = {}
        for name in names or tuple(self.specs):
            spec = self.specs[name]
            if spec.dtype != "str":
                shard = _shard_file(self.path, self._arrays[name], index // self.attrs.samples_per_shard)
                if not shard.is_file():
                    raise ContractError(f"{self.path}: shard file {shard.relative_to(self.path)} is missing")
            try:
                out[name] = self._arrays[name][index]
            except Exception as exc:
                raise ContractError(f"{self.path}: cannot read {name}[{index}]: {exc}") from exc
        return out


def chunk_codecs(spec: ArraySpec) -> dict[str, Any]:
    """Codecs for one array: lossless blosc-zstd with bit-shuffle (the best ratio on T5 activations of
    the lossless codecs we tried) plus a CRC32C per chunk so corruption fails loudly on read."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    if spec.dtype == "str":
        return {"compressors": [Crc32cCodec()]}
    return {"compressors": [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), Crc32cCodec()]}


def _shard_file(store: Path, array: zarr.Array, shard_index: int) -> Path:
    """Path of Zarr shard ``shard_index`` of ``array``, named by the array's own chunk-key encoding."""
    key = array.metadata.encode_chunk_key((shard_index, *[0] * (array.ndim - 1)))
    return store / array.path / key


def _samples(start: int, attrs: StoreAttrs) -> str:
    """The closed sample range of the Zarr shard that begins at ``start``: 'samples 4..7'."""
    return f"samples {start}..{min(start + attrs.samples_per_shard, attrs.num_samples) - 1}"


def _spot_check(array: zarr.Array, name: str, attrs: StoreAttrs, storage_dtype: str) -> list[str]:
    """Decode the first chunk of every shard file: a truncated or garbled shard fails its index CRC."""
    for start in range(0, attrs.num_samples, attrs.samples_per_shard):
        try:
            chunk = array[start : start + 1]
        except Exception as exc:
            return [f"{name}: unreadable in {_samples(start, attrs)} ({type(exc).__name__}: {exc})"]
        if not _all_finite(chunk, storage_dtype):
            return [f"{name}: non-finite values in sample {start}"]
    return []


def _all_finite(values: np.ndarray, storage_dtype: str) -> bool:
    if storage_dtype == "bfloat16":
        # A bf16 is Inf or NaN exactly when its exponent bits are all ones: one integer pass, much faster
        # than converting (this runs on every block Stage 1 writes).
        return values.size == 0 or int(np.max(values & _BF16_ABS)) < _BF16_EXPONENT
    return bool(np.isfinite(values).all())


_BF16_ABS, _BF16_EXPONENT = np.uint16(0x7FFF), 0x7F80


def _dtype_matches(dtype: np.dtype, spec: ArraySpec) -> bool:
    if spec.dtype == "str":
        return dtype.kind in "OUT"
    return dtype == np.dtype(spec.dtype)


def _missing_shard_files(store: Path, array: zarr.Array, spec: ArraySpec, attrs: StoreAttrs) -> list[str]:
    if spec.dtype == "str":
        return []
    count = shard_count(attrs.num_samples, attrs.samples_per_shard)
    return [str(i) for i in range(count) if not _shard_file(store, array, i).is_file()]


def _raw_bytes(spec: ArraySpec, n: int) -> int:
    if spec.dtype == "str":
        return 0
    return n * int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def shard_count(num_samples: int, samples_per_shard: int) -> int:
    return math.ceil(num_samples / samples_per_shard) if num_samples else 0
