"""Stage 2 on a real Stage 1 dataset (tiny encoders, float32 storage): one step's loss equals TorchTitan's
own online Flux step on the same raw samples, and ``sbatch slurm/train.sbatch`` trains on two nodes."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import ExifTags, Image
from torchtitan.components.loss import build_mse_loss
from torchtitan.distributed import ParallelDims
from torchtitan.distributed import utils as dist_utils
from torchtitan.models.flux import FluxModel
from torchtitan.models.flux.train import FluxTrainer

from shared import contract
from shared.assets import write_sample_tars
from shared.store import StoreReader
from stage1_encode.config import load_config
from stage1_encode.pipeline import Task, run_task
from stage2_train.data import collate, load_empty_prompt, open_dataset, precomputed_dataset
from stage2_train.flavors import FLAVORS
from stage2_train.step import step_seed
from stage2_train.trainer import PrecomputedFluxTrainer
from test_stage1_pipeline import TINY_CONFIG as ENCODE_TINY_CONFIG
from test_stage1_slurm import online_image, online_models, tar_samples
from test_stage2_helpers import REPO_ROOT, TINY_CONFIG, parse_job_config

pytest_plugins = ["fixtures_assets"]

STEP, RANK = 1, 0


@pytest.fixture(scope="module")
def stage1(tiny_assets, tmp_path_factory) -> tuple[Path, Path]:
    """(tars, dataset): 2 CC12M-style tars of 16 samples encoded by Stage 1 into float32 stores."""
    root = tmp_path_factory.mktemp("stage2-on-stage1")
    write_sample_tars(root / "tars", shards=2, per_shard=16, seed=0)
    run_task(load_config(ENCODE_TINY_CONFIG), Task(str(root / "tars"), root / "ds", tiny_assets))
    return root / "tars", root / "ds"


def _same_preprocessing(jpg: bytes) -> bool:
    """Samples where Stage 1 and TorchTitan decode alike: RGB, no EXIF rotation (TorchTitan resizes
    CMYK before converting, and the orientation tag is where decoders have differed)."""
    image = Image.open(io.BytesIO(jpg))
    return image.mode == "RGB" and image.getexif().get(ExifTags.Base.Orientation, 1) == 1


def _bare(cls: type, **attributes: object):
    """A trainer object carrying only what ``forward_backward_step`` reads: both steps run for real,
    on one shared model, without building a distributed job around them."""
    trainer = cls.__new__(cls)
    trainer.__dict__.update(attributes)
    return trainer


@pytest.mark.parametrize("dropout", [0.0, 1.0])
def test_one_step_equals_torchtitans_online_step(stage1, tiny_assets, tmp_path, monkeypatch, dropout):
    assert_step_equals_online(*stage1, tiny_assets, tmp_path, monkeypatch, dropout)


def assert_step_equals_online(tars: Path, root: Path, tiny_assets: Path, tmp_path: Path, monkeypatch, dropout: float, img_size: int = 256) -> None:
    """Stage 2's loss and gradients on a batch of ``root`` equal TorchTitan's online step on the raw samples."""
    config = parse_job_config(
        *("--training.dataset_path", str(root), "--training.classifier_free_guidance_prob", str(dropout)),
        *("--training.img_size", str(img_size)),
    )
    dataset = precomputed_dataset(*open_dataset(config), "fail")
    identity = dataset.identity
    raw = {key: sample for tar in sorted(tars.glob("*.tar")) for key, sample in tar_samples(tar).items()}
    readers = [StoreReader(path, identity, contract.array_specs(identity)) for path in dataset.stores]
    meta = [readers[s].read(local, ("key", "crop_box")) for s, local in map(dataset.locate, range(len(dataset)))]
    batch = [i for i, m in enumerate(meta) if _same_preprocessing(raw[str(m["key"])]["jpg"])][:4]
    assert len(batch) == 4 and any(meta[i]["crop_box"][0] or meta[i]["crop_box"][1] for i in batch)

    # Online: TorchTitan's image processing, tokenizers, T5/CLIP embedders and AE on the raw samples.
    t5_tok, clip_tok, t5, clip, ae = online_models(tiny_assets, tmp_path)
    images, t5_tokens, clip_tokens = [], [], []
    for i in batch:
        sample = raw[str(meta[i]["key"])]
        caption = "" if dropout == 1.0 else sample["txt"].decode("utf-8")  # FluxDataset's dropout at p=0 / 1
        images.append(online_image(sample["jpg"], meta[i]["crop_box"], monkeypatch, img_size))
        t5_tokens.append(t5_tok.encode(caption))
        clip_tokens.append(clip_tok.encode(caption))

    torch.manual_seed(0)
    model = FluxModel(FLAVORS["flux-tiny"])
    model.init_weights()
    with torch.no_grad():  # the output layer starts at zero; give the prompts a say in the loss
        for param in model.final_layer.parameters():
            param.normal_(std=0.05)
    common = {
        "device": torch.device("cpu"),
        "parallel_dims": ParallelDims(dp_replicate=1, dp_shard=1, cp=1, tp=1, pp=1, ep=1, etp=1, world_size=1),
        "train_context": dist_utils.get_train_context(False),
        "maybe_enable_amp": contextlib.nullcontext(),
        "loss_fn": build_mse_loss(config),
    }
    online = _bare(
        FluxTrainer,
        **common,
        model_parts=[copy.deepcopy(model)],
        _dtype=torch.float32,
        autoencoder=ae,
        t5_encoder=t5,
        clip_encoder=clip,
    )
    ours = _bare(
        PrecomputedFluxTrainer,
        **common,
        model_parts=[copy.deepcopy(model)],
        job_config=config,
        step=STEP,
        dataloader=SimpleNamespace(dp_rank=RANK),
        ledger=None,
        model_args=FLAVORS["flux-tiny"],
        empty_prompt=load_empty_prompt(root, identity),
    )

    our_inputs, our_labels = collate([dataset[i] for i in batch])
    our_loss = ours.forward_backward_step(input_dict=our_inputs, labels=our_labels)
    torch.manual_seed(step_seed(config.stage2.seed, STEP, RANK))  # the online step draws ε, noise, t globally
    online_loss = online.forward_backward_step(
        input_dict={"t5_tokens": torch.stack(t5_tokens), "clip_tokens": torch.stack(clip_tokens)},
        labels=torch.stack(images),
    )
    assert abs(our_loss.item() - online_loss.item()) <= 1e-5 * abs(online_loss.item())
    for ours_param, online_param in zip(ours.model_parts[0].parameters(), online.model_parts[0].parameters()):
        torch.testing.assert_close(ours_param.grad, online_param.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(("nproc", "shard", "wandb"), [(1, 1, True), (2, 2, False)])
def test_sbatch_trains_hsdp_on_two_nodes(slurm_cluster, stage1, tmp_path, nproc, shard, wandb):
    _, root = stage1
    dump = tmp_path / "run"
    job = slurm_cluster.submit(
        REPO_ROOT / "slurm" / "train.sbatch",
        *("--job.config_file", TINY_CONFIG, "--training.dataset_path", root, "--job.dump_folder", dump),
        *("--training.steps", "10", "--training.local_batch_size", "2"),
        *(["--metrics.enable_wandb"] if wandb else []),
        sbatch_opts=["--output", str(tmp_path / "job.out")],
        env_extra={"NPROC_PER_NODE": str(nproc)},
        timeout=240,
    )
    log = job.log()
    assert job.returncode == 0, log[-6000:]
    assert f"2 node(s) x {nproc} process(es)" in log
    assert f"dp_replicate=2, dp_shard={shard}" in log
    losses = [float(m) for m in re.findall(r"step: 10  loss:\s+(\S+)", log)]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert bool(list(dump.glob("tb/*/wandb/offline-run-*"))) == wandb, "offline wandb run (WANDB_MODE from the sbatch)"
