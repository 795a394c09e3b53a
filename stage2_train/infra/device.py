"""Make TorchTitan run on CPU (gloo) when there is no CUDA device.

TorchTitan 0.2.2 decides its device once, at import (``tools/utils.py``: ``_get_available_device_type()
or "cuda"``), and several of its modules copy that decision into their own globals. Without CUDA it
then calls ``torch.cuda.set_device`` and fails. ``use_cpu_if_no_cuda`` rebinds those globals to
"cpu" and a small stand-in for ``torch.cuda``'s memory API, from our package, before any trainer is
built — nothing in site-packages is edited. On a GPU machine it does nothing.
"""

from __future__ import annotations

import importlib
import os
import platform
import resource
from types import SimpleNamespace

import torch

# TorchTitan modules that bind ``device_type`` / ``device_module`` at import time.
_BINDING_MODULES = (
    "torchtitan.tools.utils",
    "torchtitan.distributed.parallel_dims",
    "torchtitan.distributed.utils",
    "torchtitan.components.metrics",
    "torchtitan.tools.profiling",
)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _cpu_memory_stats(device: object = None) -> dict[str, int]:
    """The two peaks TorchTitan's memory monitor reads; on CPU both are the process's peak RSS."""
    peak = _peak_rss_bytes()
    return {"active_bytes.all.peak": peak, "reserved_bytes.all.peak": peak, "num_alloc_retries": 0, "num_ooms": 0}


CPU_DEVICE_MODULE = SimpleNamespace(
    set_device=lambda device: None,
    current_device=lambda: 0,
    synchronize=lambda device=None: None,
    get_device_name=lambda device=None: f"CPU ({platform.processor() or platform.machine()})",
    get_device_properties=lambda device=None: SimpleNamespace(
        total_memory=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    ),
    memory_stats=_cpu_memory_stats,
    reset_peak_memory_stats=lambda device=None: None,
    empty_cache=lambda: None,
)
"""What TorchTitan calls on its device module, answered for the CPU."""


def use_cpu_if_no_cuda() -> str:
    """Point TorchTitan at the CPU when CUDA is unavailable; return the device type in use."""
    if torch.cuda.is_available():
        return "cuda"
    for name in _BINDING_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "device_type"):
            module.device_type = "cpu"
        if hasattr(module, "device_module"):
            module.device_module = CPU_DEVICE_MODULE
    return "cpu"
