"""This node and its allocation: software versions, GPUs against what the config asks for, and the
network settings a multi-node job needs before its first collective."""

from __future__ import annotations

import math
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata

import torch

from preflight.table import FAIL, OK, WARN, Row

TORCHTITAN_VERSION = "0.2.2"
"""The one TorchTitan Stage 2 is written against (0.3.0 does not import on the GPU image's torch 2.11)."""
TORCH_RANGE = ((2, 11), (2, 15))
"""``pyproject.toml``'s torch range: 2.11 is the GPU image's, 2.13 the CPU wheel."""
PYTHON_MIN = (3, 11)


@dataclass(frozen=True)
class Cluster:
    """Where the job runs, as Slurm tells it (outside Slurm: this machine alone)."""

    nodes: int
    allocated_gpus: int | None
    """GPUs Slurm gave each node (``SLURM_GPUS_ON_NODE``); ``None`` outside Slurm or without a GPU request."""
    visible_gpus: int
    """CUDA devices torch sees on this node."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str], visible_gpus: int) -> Cluster:
        nodes = environ.get("SLURM_NNODES") or environ.get("SLURM_JOB_NUM_NODES") or "1"
        allocated = environ.get("SLURM_GPUS_ON_NODE")
        return cls(int(nodes), int(allocated) if allocated else None, visible_gpus)


# --------------------------------------------------------------------------- versions


def version_rows() -> list[Row]:
    """Python, torch and TorchTitan as installed here: the first rows of every preflight."""
    return [
        python_row(tuple(sys.version_info[:3])),
        torch_row(torch.__version__, torch.version.cuda),
        torchtitan_row(installed_version("torchtitan")),
    ]


def python_row(version: tuple[int, ...]) -> Row:
    text = ".".join(map(str, version))
    if version[:2] < PYTHON_MIN:
        return Row("python", FAIL, f"{text}; the project needs >= {_v(PYTHON_MIN)}")
    return Row("python", OK, text)


def torch_row(version: str, cuda: str | None) -> Row:
    """``cuda`` is ``torch.version.cuda``: ``None`` for a CPU-only build."""
    build = f"CUDA {cuda} build" if cuda else "CPU-only build"
    low, high = TORCH_RANGE
    if not low <= tuple(int(p) for p in version.split("+")[0].split(".")[:2]) < high:
        return Row("torch", FAIL, f"{version} ({build}); the project needs >= {_v(low)}, < {_v(high)}")
    return Row("torch", OK, f"{version} ({build})")


def torchtitan_row(version: str | None) -> Row:
    """``version`` as installed (``None``: not installed)."""
    if version is None:
        return Row("torchtitan", FAIL, f"not installed; pip install torchtitan=={TORCHTITAN_VERSION}")
    if version != TORCHTITAN_VERSION:
        return Row("torchtitan", FAIL, f"{version}; Stage 2 is written against {TORCHTITAN_VERSION} exactly")
    return Row("torchtitan", OK, version)


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _v(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


# --------------------------------------------------------------------------- GPUs


def encode_gpu_row(device: str, cluster: Cluster) -> Row:
    """A Stage 1 task encodes on one GPU; ``device`` is the config's ``encoders.device``."""
    if cluster.visible_gpus:
        return _lost_gpus(cluster) or Row("GPUs", OK, f"{cluster.visible_gpus} visible; a Stage 1 task uses 1")
    unseen = _unseen(cluster)
    if device == "cuda":
        return Row("GPUs", FAIL, f"encoders.device = cuda, but {unseen}")
    if device == "auto":
        # With GPUs allocated this is a broken node or a CPU-only torch, not a deliberate CPU run.
        status = FAIL if cluster.allocated_gpus else WARN
        return Row("GPUs", status, f"{unseen}: the encoders would run on CPU (fine for tiny assets only)")
    return Row("GPUs", WARN if cluster.allocated_gpus else OK, f"encoders.device = cpu; {unseen}")


def train_gpu_row(degrees: dict[str, int], cluster: Cluster, cpu_sized: bool, model: str) -> Row:
    """Do the parallel degrees fit the allocation (nodes x GPUs per node)? ``-1`` is "whatever is left".

    Without CUDA, Stage 2 runs on CPU with gloo: fine for a model whose training state fits in memory
    (``cpu_sized``; also what the local test cluster's emulated GPUs give), hopeless for FLUX.1-schnell.
    """
    asked = " x ".join(f"{name} {'auto' if d == -1 else d}" for name, d in degrees.items() if d != 1) or "1 process"
    if not cluster.visible_gpus:
        if not cpu_sized:
            return Row("GPUs", FAIL, f"{model} needs GPUs for {asked}, but {_unseen(cluster)}")
        return Row("GPUs", WARN if cluster.allocated_gpus else OK, f"{_unseen(cluster)}: CPU/gloo run of {model} for {asked}")
    if lost := _lost_gpus(cluster):
        return lost
    per_node = cluster.allocated_gpus or cluster.visible_gpus
    world = cluster.nodes * per_node
    fixed = math.prod(d for d in degrees.values() if d != -1)
    where = f"{cluster.nodes} node(s) x {per_node} GPUs = {world}"
    if (-1 in degrees.values() and world % fixed) or (-1 not in degrees.values() and world != fixed):
        return Row("GPUs", FAIL, f"{asked} does not fit {where}")
    return Row("GPUs", OK, f"{where} for {asked}")


def _unseen(cluster: Cluster) -> str:
    if cluster.allocated_gpus:
        return f"Slurm allocated {cluster.allocated_gpus} GPU(s) on this node and torch sees none"
    return "no CUDA device is visible"


def _lost_gpus(cluster: Cluster) -> Row | None:
    """Torch sees some GPUs but fewer than Slurm allocated: a failed GPU, or CUDA_VISIBLE_DEVICES."""
    if cluster.allocated_gpus and cluster.visible_gpus < cluster.allocated_gpus:
        return Row(
            "GPUs", FAIL, f"Slurm allocated {cluster.allocated_gpus} GPUs on this node, torch sees {cluster.visible_gpus}"
        )
    return None


# --------------------------------------------------------------------------- network


def socket_ifname_row(environ: Mapping[str, str], cluster: Cluster, interfaces: list[str]) -> Row:
    """NCCL (GPU) or gloo (CPU) picks its socket interface itself unless told; on multi-homed nodes it
    may pick one the other nodes cannot reach (docker0, a management network)."""
    var = "NCCL_SOCKET_IFNAME" if cluster.visible_gpus else "GLOO_SOCKET_IFNAME"
    value = environ.get(var)
    if cluster.nodes <= 1 and not value:
        return Row(var, OK, "unset; one node needs none")
    if not value:
        return Row(var, WARN, f"unset: the library picks an interface itself (this node has {', '.join(interfaces)})")
    matching = _matching_interfaces(value, interfaces, prefixes=var.startswith("NCCL"))
    if not matching:
        return Row(var, FAIL, f"{value!r} matches no interface of this node ({', '.join(interfaces)})")
    return Row(var, OK, f"{value} -> {', '.join(matching)}")


def _matching_interfaces(spec: str, interfaces: list[str], prefixes: bool) -> list[str]:
    """Gloo takes comma-separated names; NCCL prefixes, or exact names after ``=``, ``^`` to exclude."""
    exclude = prefixes and spec.startswith("^")
    exact = not prefixes or spec.lstrip("^").startswith("=")
    names = [n for n in spec.lstrip("^").lstrip("=").split(",") if n]
    hit = (lambda i: i in names) if exact else (lambda i: any(i.startswith(n) for n in names))
    return [i for i in interfaces if hit(i) != exclude]


def rendezvous_row(environ: Mapping[str, str], cluster: Cluster, resolve: Callable[[str], str]) -> Row:
    """The other nodes connect to ``MASTER_ADDR``, else (slurm/train.sbatch) to this node by name: it
    must resolve, and not to loopback (``127.0.1.1 <hostname>`` in /etc/hosts is a classic)."""
    host = environ.get("MASTER_ADDR")
    source = "MASTER_ADDR"
    if not host:
        if cluster.nodes <= 1:
            return Row("rendezvous", OK, "MASTER_ADDR unset; one node rendezvous locally")
        host, source = environ.get("SLURMD_NODENAME") or socket.gethostname(), "this node (MASTER_ADDR unset)"
    try:
        address = resolve(host)
    except OSError as e:
        return Row("rendezvous", FAIL, f"{source} {host!r} does not resolve: {e.strerror or e}")
    if cluster.nodes > 1 and address.startswith("127."):
        return Row("rendezvous", WARN, f"{source} {host} -> {address}: loopback, other nodes cannot connect")
    return Row("rendezvous", OK, f"{source} {host} -> {address}")


def interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())
