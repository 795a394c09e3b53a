"""``python -m stage1_encode.preflight`` and ``python -m stage2_train.preflight``: each check alone (CPU
machine, GPU counts and Slurm variables given), then whole stages on tiny assets, real tars and datasets in the Stage 1 format."""

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_stage2_helpers import write_tiny_dataset

from preflight import system
from preflight.system import Cluster
from preflight.table import FAIL, OK, WARN, Row, render
from shared import contract
from shared.units import size
from stage1_encode import asset_loading
from stage1_encode import preflight as encode_preflight
from stage1_encode.preflight import main as encode_main
from stage2_train import preflight as train_preflight
from stage2_train.preflight import main as train_main

pytest_plugins = ["fixtures_assets"]

REPO = Path(__file__).resolve().parent.parent
CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts what a machine without CUDA reports")


@pytest.fixture(autouse=True)
def outside_slurm(monkeypatch):
    """The whole-stage tests read the environment: make it a plain machine, whoever runs the tests."""
    for name in ("SLURM_NNODES", "SLURM_JOB_NUM_NODES", "SLURM_GPUS_ON_NODE", "SLURMD_NODENAME", "MASTER_ADDR",
                 "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        monkeypatch.delenv(name, raising=False)


def table(output: str) -> dict[str, tuple[str, str]]:
    """check -> (status, detail), from the printed table (columns found from the header)."""
    lines = output.strip().splitlines()
    status_at, detail_at = lines[0].index("status"), lines[0].index("detail")
    return {l[:status_at].strip(): (l[status_at:detail_at].strip(), l[detail_at:]) for l in lines[2:-1]}


# --------------------------------------------------------------------------- the table


def test_table_is_aligned_with_a_verdict():
    text = render([Row("python", OK, "3.11.7"), Row("output space", FAIL, "1 GiB free"), Row("GPUs", WARN, "none")])
    lines = text.splitlines()
    assert lines[0].split() == ["check", "status", "detail"] and set(lines[1]) == {"-", " "}
    assert {line.index(s) for line, s in zip(lines[2:5], (OK, FAIL, WARN))} == {lines[0].index("status")}
    assert lines[-1] == "preflight: 1 OK, 1 WARN, 1 FAIL"


# --------------------------------------------------------------------------- single checks


def test_versions():
    assert system.torchtitan_row("0.2.2").status == OK
    assert system.torchtitan_row("0.3.0") == Row("torchtitan", FAIL, "0.3.0; Stage 2 is written against 0.2.2 exactly")
    assert system.torchtitan_row(None).detail == "not installed; pip install torchtitan==0.2.2"
    assert system.torch_row("2.13.0+cpu", None) == Row("torch", OK, "2.13.0+cpu (CPU-only build)")
    assert system.torch_row("2.11.0+cu128", "12.8").detail == "2.11.0+cu128 (CUDA 12.8 build)"
    assert system.torch_row("2.10.1", "12.6").status == system.torch_row("2.15.0", None).status == FAIL
    assert system.python_row((3, 10, 4)) == Row("python", FAIL, "3.10.4; the project needs >= 3.11")


def test_encode_gpus():
    cpu, allocated_unseen = Cluster(nodes=1, allocated_gpus=None, visible_gpus=0), Cluster(1, 1, 0)
    assert system.encode_gpu_row("cuda", cpu) == Row("GPUs", FAIL, "encoders.device = cuda, but no CUDA device is visible")
    assert system.encode_gpu_row("auto", cpu).status == WARN
    assert system.encode_gpu_row("auto", allocated_unseen) == Row(
        "GPUs", FAIL,
        "Slurm allocated 1 GPU(s) on this node and torch sees none: the encoders would run on CPU (fine for tiny assets only)",
    )
    assert system.encode_gpu_row("cpu", cpu).status == OK
    assert system.encode_gpu_row("cpu", allocated_unseen).status == WARN  # the local test cluster's emulated GPUs
    assert system.encode_gpu_row("auto", Cluster(1, 1, 1)) == Row("GPUs", OK, "1 visible; a Stage 1 task uses 1")
    assert system.encode_gpu_row("auto", Cluster(1, 2, 1)).status == FAIL


def test_train_gpus_against_parallel_degrees():
    hsdp = {"replicate": 2, "shard": 8, "tp": 1, "cp": 1, "pp": 1}
    assert system.train_gpu_row(hsdp, Cluster(2, 8, 8), False, "m") == Row(
        "GPUs", OK, "2 node(s) x 8 GPUs = 16 for replicate 2 x shard 8"
    )
    assert system.train_gpu_row(hsdp, Cluster(1, 8, 8), False, "m") == Row(
        "GPUs", FAIL, "replicate 2 x shard 8 does not fit 1 node(s) x 8 GPUs = 8"
    )
    assert system.train_gpu_row(hsdp, Cluster(2, 8, 7), False, "m") == Row(
        "GPUs", FAIL, "Slurm allocated 8 GPUs on this node, torch sees 7"
    )
    assert system.train_gpu_row(hsdp, Cluster(1, None, 16), False, "m").status == OK  # outside Slurm: one node
    auto = hsdp | {"shard": -1}
    assert system.train_gpu_row(auto, Cluster(2, 8, 8), False, "m").status == OK
    assert system.train_gpu_row(auto | {"replicate": 3}, Cluster(2, 8, 8), False, "m").status == FAIL
    assert system.train_gpu_row(auto, Cluster(1, None, 0), True, "flux-tiny") == Row(
        "GPUs", OK, "no CUDA device is visible: CPU/gloo run of flux-tiny for replicate 2 x shard auto"
    )
    assert system.train_gpu_row(auto, Cluster(2, 8, 0), True, "flux-tiny").status == WARN  # emulated GPUs
    assert system.train_gpu_row(hsdp, Cluster(2, 8, 0), False, "flux-schnell") == Row(
        "GPUs", FAIL,
        "flux-schnell needs GPUs for replicate 2 x shard 8, but Slurm allocated 8 GPU(s) on this node and torch sees none",
    )


def test_network_settings():
    one, two = Cluster(1, None, 8), Cluster(2, 8, 8)
    nics = ["docker0", "eth0", "ib0", "lo"]
    assert system.socket_ifname_row({}, one, nics) == Row("NCCL_SOCKET_IFNAME", OK, "unset; one node needs none")
    assert system.socket_ifname_row({}, two, nics).status == WARN
    gloo = Cluster(2, None, 0)
    assert system.socket_ifname_row({}, gloo, nics).check == "GLOO_SOCKET_IFNAME"
    assert system.socket_ifname_row({"GLOO_SOCKET_IFNAME": "eth0"}, gloo, nics).status == OK
    assert system.socket_ifname_row({"GLOO_SOCKET_IFNAME": "eth"}, gloo, nics).status == FAIL  # names, not prefixes
    for value, matched in (("ib", "ib0"), ("eth,ib", "eth0, ib0"), ("^docker,lo", "eth0, ib0"), ("=eth0", "eth0")):
        assert system.socket_ifname_row({"NCCL_SOCKET_IFNAME": value}, two, nics) == Row(
            "NCCL_SOCKET_IFNAME", OK, f"{value} -> {matched}"
        )
    for value in ("bond", "=eth"):
        assert system.socket_ifname_row({"NCCL_SOCKET_IFNAME": value}, two, nics).status == FAIL
    assert system.interfaces() and "lo" in system.interfaces()

    def resolve(host: str) -> str:
        if host == "nowhere":
            raise socket.gaierror(-2, "Name or service not known")
        return {"localhost": "127.0.0.1"}.get(host, "10.0.0.7")

    assert system.rendezvous_row({}, one, resolve).status == OK
    assert system.rendezvous_row({"SLURMD_NODENAME": "n1"}, two, resolve) == Row(
        "rendezvous", OK, "this node (MASTER_ADDR unset) n1 -> 10.0.0.7"
    )
    assert system.rendezvous_row({"MASTER_ADDR": "nowhere"}, two, resolve) == Row(
        "rendezvous", FAIL, "MASTER_ADDR 'nowhere' does not resolve: Name or service not known"
    )
    assert system.rendezvous_row({"MASTER_ADDR": "localhost"}, two, resolve).status == WARN
    assert system.rendezvous_row({"MASTER_ADDR": "localhost"}, two, socket.gethostbyname).detail.endswith(
        "127.0.0.1: loopback, other nodes cannot connect"
    )


def test_slurm_allocation_from_environment():
    assert Cluster.from_env({}, 0) == Cluster(1, None, 0)
    assert Cluster.from_env({"SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "8"}, 8) == Cluster(2, 8, 8)
    assert Cluster.from_env({"SLURM_JOB_NUM_NODES": "4"}, 1) == Cluster(4, None, 1)


# --------------------------------------------------------------------------- Stage 1


@pytest.fixture
def encode_inputs(tiny_assets, tmp_path):
    """Tiny assets without a hash cache, two real sample tars, and a dataset path not yet created."""
    from fixtures import write_sample_tars

    assets = Path(shutil.copytree(tiny_assets, tmp_path / "assets", ignore=shutil.ignore_patterns(".sha256-cache*")))
    write_sample_tars(tmp_path / "tars", shards=2, per_shard=3)
    return ["--input", str(tmp_path / "tars"), "--output", str(tmp_path / "dataset"), "--assets", str(assets)]


@CPU_ONLY
def test_encode_stage(encode_inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(encode_preflight, "free_bytes", lambda path: 100 << 30)
    tiny = ["--config", str(REPO / "configs" / "encode_tiny.toml"), *encode_inputs]
    assert encode_main(tiny) == 0
    rows = table(capsys.readouterr().out)
    assert list(rows) == ["python", "torch", "torchtitan", "config", "GPUs", "input", "assets", "output", "output space"]
    assert rows["GPUs"] == (OK, "encoders.device = cpu; no CUDA device is visible")
    assert rows["input"][0] == OK and rows["input"][1].startswith("2 tars, ")
    assert rows["assets"][0] == WARN and "SHA-256 not cached" in rows["assets"][1]
    # Tiny float32 sample: 4 B x (T5 256 x 32 + CLIP 32 + 2 x 16 x 32 x 32) / 1.4 compression = 114 KiB.
    space_status, space_detail = rows["output space"]
    assert space_status == OK
    assert re.fullmatch(r"100 GiB free, [\d.]+ KiB needed: ~\d+ samples in 2 tar\(s\) x 114 KiB", space_detail)
    # --hash hashes once and fills the cache; later runs read it.
    assert encode_main([*tiny, "--hash"]) == 0 and table(capsys.readouterr().out)["assets"][0] == OK
    hashed = []
    monkeypatch.setattr(asset_loading, "_sha256", lambda path: hashed.append(path))
    assert encode_main(tiny) == 0 and table(capsys.readouterr().out)["assets"][0] == OK and hashed == []

    # The production config on this CPU machine: encoders.device "auto" warns, "cuda" fails.
    assert encode_main(encode_inputs) == 0 and table(capsys.readouterr().out)["GPUs"][0] == WARN
    assert encode_main([*encode_inputs, "--encoders.device", "cuda"]) == 1
    assert table(capsys.readouterr().out)["GPUs"] == (FAIL, "encoders.device = cuda, but no CUDA device is visible")
    assert encode_main([*encode_inputs, "--batch.t5", "7"]) == 1
    assert table(capsys.readouterr().out)["config"] == (FAIL, "batch.t5 must divide batch.size (256)")

    monkeypatch.setattr(encode_preflight, "free_bytes", lambda path: 1 << 10)
    assert encode_main(tiny) == 1 and table(capsys.readouterr().out)["output space"][0] == FAIL


def test_encode_stage_refusals(encode_inputs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (Path(encode_inputs[5]) / "tokenizer" / "vocab.json").unlink()
    (tmp_path / "file").write_text("")
    args = ["--config", str(REPO / "configs" / "encode_tiny.toml"), *encode_inputs]
    args[args.index("--input") + 1] = str(tmp_path / "empty")
    args[args.index("--output") + 1] = str(tmp_path / "file" / "dataset")
    assert encode_main(args) == 1
    rows = table(capsys.readouterr().out)
    assert rows["input"][0] == rows["assets"][0] == rows["output"][0] == FAIL
    assert "no input tars found" in rows["input"][1]
    assert "tokenizer/vocab.json: missing" in rows["assets"][1]
    assert rows["output"][1] == f"{tmp_path / 'file'} is not a directory"
    with pytest.raises(SystemExit):
        encode_main(["--input", str(tmp_path)])
    assert "the encode stage needs --output, --assets" in capsys.readouterr().err


def test_encode_onto_an_existing_dataset(encode_inputs, tmp_path, capsys, monkeypatch):
    """Stores already there count by their measured size; other encoders than the dataset's fail."""
    monkeypatch.setattr(encode_preflight, "free_bytes", lambda path: 100 << 30)
    dataset = write_tiny_dataset(tmp_path / "dataset")  # stores synthetic-0000, -0001; encoders {}
    tars = tmp_path / "tars"
    for name in ("synthetic-0000.tar", "synthetic-0001.tar", "synthetic-0002.tar"):
        shutil.copy(tars / "cc12m-train-0000.tar", tars / name)
    stored = [contract.read_store_attrs(p).stored_bytes for p in contract.committed_store_paths(dataset)]
    assert encode_main(["--config", str(REPO / "configs" / "encode_tiny.toml"), *encode_inputs, "--hash"]) == 1
    rows = table(capsys.readouterr().out)
    assert rows["output space"][1].endswith(f"3 tar(s) x {size(sum(stored) / 2)} (mean of 2 committed stores)")
    assert rows["dataset encoders"][0] == FAIL and "was encoded with other files: ae.safetensors, " in rows["dataset encoders"][1]


# --------------------------------------------------------------------------- Stage 2


@CPU_ONLY
def test_train_stage(tmp_path, capsys, monkeypatch):
    dataset = write_tiny_dataset(tmp_path / "dataset")
    tiny = ["--job.config_file", str(REPO / "configs" / "flux_tiny.toml"), "--training.dataset_path", str(dataset),
            "--job.dump_folder", str(tmp_path / "dump")]
    assert train_main(tiny) == 0
    rows = table(capsys.readouterr().out)
    assert list(rows) == ["python", "torch", "torchtitan", "config", "GPUs", "GLOO_SOCKET_IFNAME", "rendezvous", "GPU memory",
                          "dataset", "dataset size", "dataset extent", "output"]
    assert rows["dataset size"] == (OK, "24 samples fill a global batch of 4")  # shard auto: at least one rank
    assert rows["GPU memory"] == (OK, "not checked: no GPU here (--stage2.gpu_memory_gib GiB checks it)")  # tests/test_plan.py checks it
    assert rows["dataset extent"] == (OK, "may start")
    assert rows["GPUs"] == (OK, "no CUDA device is visible: CPU/gloo run of flux-tiny (257 k parameters) for shard auto")
    assert rows["dataset"][1].startswith(f"{dataset}: identity {contract.read_identity(dataset).digest()} fits flux-tiny")

    # The production job on this machine, as slurm/train.sbatch would run it on two nodes.
    monkeypatch.setattr(train_preflight, "free_bytes", lambda path: 1 << 40)
    monkeypatch.setenv("SLURM_NNODES", "2")
    schnell = ["--job.config_file", str(REPO / "configs" / "flux_schnell.toml"), "--training.dataset_path", str(dataset),
               "--job.dump_folder", str(tmp_path / "dump")]
    assert train_main(schnell) == 1
    rows = table(capsys.readouterr().out)
    assert rows["GPUs"] == (
        FAIL, "flux-schnell (11.9 G parameters) needs GPUs for replicate 2 x shard 8, but no CUDA device is visible"
    )
    assert rows["GLOO_SOCKET_IFNAME"][0] == WARN
    assert rows["dataset"][0] == FAIL and "dataset t5_dim = 32, but flavor context_in_dim = 4096" in rows["dataset"][1]
    assert rows["checkpoint space"] == (OK, "1.00 TiB free, 532 GiB needed: 4 checkpoint(s) x 133 GiB")


def test_train_stage_refusals(tmp_path, capsys):
    tiny = str(REPO / "configs" / "flux_tiny.toml")
    assert train_main(["--job.config_file", tiny, "--training.dataset_path", ""]) == 1
    assert table(capsys.readouterr().out)["dataset"] == (FAIL, "no dataset: give --training.dataset_path DIR")
    assert train_main(["--job.config_file", tiny, "--training.dataset_path", str(tmp_path)]) == 1
    assert table(capsys.readouterr().out)["dataset"][1] == f"{tmp_path}: {tmp_path} is not a dataset: dataset.json is missing"
    assert train_main(["--job.config_file", tiny, "--model.flavor", "flux-huge"]) == 1
    assert "unknown model.flavor 'flux-huge'" in table(capsys.readouterr().out)["config"][1]
    with pytest.raises(SystemExit):
        train_main([])
    assert "the train stage needs --job.config_file FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["--job.config_file", tiny, "--dataset", str(tmp_path), "--verbose"])
    err = capsys.readouterr().err
    assert "--dataset is not an argument of python -m stage2_train; it takes --training.dataset_path DIR" in err
    assert "--verbose is not an argument of python -m stage2_train; it takes --section.key value" in err


def test_command_line(encode_inputs, tmp_path):
    """A fresh interpreter, as the sbatch scripts run it: exit 1 on a FAIL, table on stdout."""
    args = [*encode_inputs, "--encoders.device", "cuda", "--image.size", "100"]
    result = subprocess.run([sys.executable, "-m", "stage1_encode.preflight", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stderr
    assert table(result.stdout)["config"] == (FAIL, "image.size must be a positive multiple of 16")
