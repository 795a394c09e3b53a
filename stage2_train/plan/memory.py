"""Peak memory of one training step by kind, and the bytes its collectives move — counted on storages.

Why our own accounting and not ``torch.distributed._tools.fsdp2_mem_tracker.FSDPMemTracker``: a quick
try with that tracker reported 149.5 GiB of optimizer state per rank for flux-schnell 2 x 8, where
AdamW's two fp32 moments of a 1/8 shard are 11.1 GiB. Its code labels a tensor by the moment it is
made — everything made while ``optimizer.step`` runs is optimizer state, including AdamW's lazily made
state on the first step and every temporary of the step — which is the likely cause (read, not
reproduced here). Here a storage's kind is decided by *what it is* at the moment of the peak, not
by when it was made:

* parameters, gradients, optimizer state: the storages behind the sharded parameters, their ``.grad``
  and ``optimizer.state`` after the step (one storage counted once, however many views share it —
  FSDP2's gradients of one block are views of one reduce-scatter output);
* temporaries: FSDP2's all-gathered (unsharded) parameters — storages FSDP2 frees and regrows with
  ``UntypedStorage.resize_`` — and everything else made during backward or the optimizer step
  (activation gradients, unsharded gradients before their reduce-scatter, recomputed activations);
* activations: what the forward made and is still live (saved for backward).

The optimizer state exists before the measured step (a warm-up step made it), as in every step but
the first, so the peak is the steady state's; the step's live total is also recorded after every op
(``series``), from which ``plan_sizing.PeakEnvelope`` solves the peak at any batch. Works on real tensors and on fake ones (``FakeTensorMode``:
each fake storage has its real size).
"""

from __future__ import annotations

import gc
import weakref
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch._guards import active_fake_mode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

KINDS = ("parameters", "gradients", "optimizer_state", "activations", "temporaries")
GATHERED = "gathered"
"""Storages FSDP2 resizes: all-gathered parameters (reported under temporaries)."""
_c10d = torch.ops.c10d
COLLECTIVES = {
    _c10d._allgather_base_.default: "all_gather",
    _c10d._reduce_scatter_base_.default: "reduce_scatter",
    _c10d.allreduce_.default: "all_reduce",
}
"""c10d ops -> the collective whose bytes they move (output of an all-gather, input of a reduce-scatter)."""


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds: a DTensor's local shard, else the tensor itself."""
    return tensor._local_tensor if hasattr(tensor, "_local_tensor") else tensor


def unique_storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one storage count once)."""
    storages = {id(s): s.nbytes() for s in (local(t).untyped_storage() for t in tensors)}
    return sum(storages.values())


def state_tensors(model: torch.nn.Module, optimizers: Iterable[torch.optim.Optimizer]) -> dict[str, list[torch.Tensor]]:
    """The step's persistent tensors by kind: sharded parameters, their gradients, optimizer state."""
    params = list(model.parameters())
    return {
        "parameters": params + list(model.buffers()),
        "gradients": [p.grad for p in params if p.grad is not None],
        "optimizer_state": [
            v for o in optimizers for s in o.state.values() for v in s.values() if isinstance(v, torch.Tensor)
        ],
    }


@dataclass
class StepMemory:
    """One step's peak (bytes, by kind, at the moment of the peak) and bytes per collective."""

    peak_bytes: int = 0
    at_peak: dict[str, int] = field(default_factory=dict)
    gathered_at_peak: int = 0
    peak_phase: str = ""
    collective_bytes: dict[str, int] = field(default_factory=dict)
    state_bytes: dict[str, int] = field(default_factory=dict)
    """Parameters, gradients and optimizer state per rank after the step (distinct storages)."""
    series: list[int] = field(default_factory=list, repr=False)
    """Live bytes after each op and each ``resize_``, in order (``plan_sizing.PeakEnvelope``)."""


class MemoryTimeline(TorchDispatchMode):
    """Records every storage's size over time (allocation, ``resize_``, free) during a step.

    ``phase`` is set by the caller ("forward", "backward", "optimizer"). ``register`` adds storages
    that exist before the step (parameters, optimizer state)."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "before"
        self._serial: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._made_in: list[str] = []
        self._events: list[tuple[int, int]] = []  # (serial, byte delta), in time order
        self._current: dict[int, int] = {}  # serial -> bytes now
        self._live = 0
        self._series: list[int] = []
        self._peak = (0, -1, "")  # bytes, event index, phase
        self._resized: set[int] = set()
        self.collective_bytes: Counter[str] = Counter()
        self._resize = torch.UntypedStorage.resize_

    supports_higher_order_operators = True
    """Compiled blocks under activation checkpointing run higher-order ops (``run_and_save_rng_state``):
    they pass through ``__torch_dispatch__`` like any op, their outputs counted as allocations."""

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        """Lets ``torch.compile`` compile under this mode (dynamo skips frames under any other mode): the
        mode is off while dynamo traces and AOTAutograd partitions, and on while the compiled graphs run,
        so a compiled block's memory is what its graphs allocate (``plan.step``'s ``MIN_CUT_BACKEND``)."""
        return True

    def register(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            self._storage_serial(local(t).untyped_storage())

    def _storage_serial(self, storage: torch.UntypedStorage, nbytes: int | None = None) -> int:
        serial = self._serial.get(storage)
        if serial is None:
            serial = len(self._made_in)
            self._serial[storage] = serial
            self._made_in.append(self.phase)
            weakref.finalize(storage, self._freed, serial)
            self._add(serial, storage.nbytes() if nbytes is None else nbytes)
        return serial

    def _add(self, serial: int, delta: int) -> None:
        if delta:
            self._current[serial] = self._current.get(serial, 0) + delta
            self._events.append((serial, delta))
            self._live += delta
            if self._live > self._peak[0]:
                self._peak = (self._live, len(self._events) - 1, self.phase)

    def _freed(self, serial: int) -> None:
        self._add(serial, -self._current.get(serial, 0))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if active_fake_mode() is not self._fake_mode:
            return out  # DTensor's sharding propagation on its own fake tensors: metadata, no memory
        kind = COLLECTIVES.get(func)
        if kind is not None:
            moved = args[1] if kind == "reduce_scatter" else args[0]
            self.collective_bytes[kind] += sum(t.nbytes for t in tree_leaves(moved) if isinstance(t, torch.Tensor))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not hasattr(t, "_local_tensor"):
                self._storage_serial(t.untyped_storage())
        self._series.append(self._live)
        return out

    def __enter__(self) -> MemoryTimeline:
        timeline, resize = self, self._resize
        self._fake_mode = active_fake_mode()
        gc.disable()  # storages freed by reference counting only: the same events in the same order at any batch

        def tracked_resize(storage: torch.UntypedStorage, size: int) -> torch.UntypedStorage:
            before = storage.nbytes()
            result = resize(storage, size)
            serial = timeline._storage_serial(storage, nbytes=before)
            timeline._resized.add(serial)
            timeline._add(serial, storage.nbytes() - before)
            timeline._series.append(timeline._live)
            return result

        torch.UntypedStorage.resize_ = tracked_resize
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        torch.UntypedStorage.resize_ = self._resize
        gc.enable()
        super().__exit__(*exc)

    def result(self, state: dict[str, list[torch.Tensor]]) -> StepMemory:
        """Sizes at the peak, each storage given its kind (see the module docstring); call after the step."""
        peak, index, phase = self._peak
        size: Counter[int] = Counter()
        for serial, delta in self._events[: index + 1]:
            size[serial] += delta
        kind_of: dict[int, str] = {}
        for kind, tensors in state.items():
            for t in tensors:
                serial = self._serial.get(local(t).untyped_storage())
                if serial is not None:
                    kind_of.setdefault(serial, kind)
        at_peak = dict.fromkeys(KINDS, 0)
        gathered = 0
        for serial, nbytes in size.items():
            kind = kind_of.get(serial)
            if kind is None:
                if serial in self._resized:
                    gathered += nbytes
                kind = "activations" if self._made_in[serial] == "forward" and serial not in self._resized else "temporaries"
            at_peak[kind] += nbytes
        state_bytes = {kind: unique_storage_bytes(tensors) for kind, tensors in state.items()}
        return StepMemory(peak, at_peak, gathered, phase, dict(self.collective_bytes), state_bytes,
                          self._series)  # fmt: skip
