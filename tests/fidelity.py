"""One training step two ways on the same raw CC12M-style samples: Stage 2 from a Stage 1 dataset, and
TorchTitan's own ``FluxTrainer.forward_backward_step`` (its image processing, tokenizers, T5/CLIP
embedders and AE run online). Both steps run for real on copies of one model; only the distributed job
around them is left out. Used in-process at world size 1 (tests/test_stage2_on_stage1.py) and under
torchrun at world size 2 (tests/fidelity_worker.py).

The model's every parameter is perturbed away from ``init_weights`` (which zeroes the modulation and
output layers: the blocks would pass the image stream through untouched and the loss would not depend
on T5 at all), so the loss depends on every input.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import ExifTags, Image
from test_stage1_slurm import online_image, online_models, tar_samples
from test_stage2_helpers import parse_job_config
from torchtitan.components.loss import build_mse_loss
from torchtitan.distributed import ParallelDims
from torchtitan.distributed import utils as dist_utils
from torchtitan.models.flux import FluxModel
from torchtitan.models.flux.train import FluxTrainer

from shared import contract
from shared.store import StoreReader
from stage2_train.data.dataset import PrecomputedDataset, collate, load_empty_prompt
from stage2_train.data.loader import open_dataset, precomputed_dataset
from stage2_train.infra.accumulation import MicroBatchCounter
from stage2_train.model.flavors import FLAVORS
from stage2_train.step import step_generator, step_seed
from stage2_train.trainer import PrecomputedFluxTrainer

STEP = 3
"""A step whose dropout draws at 0.447 drop T5 only, CLIP only, both and neither among the first 4 samples."""
DROPOUT = 0.447
"""configs/flux_schnell.toml's classifier_free_guidance_prob."""
CORRUPTIONS = ("t5", "clip", "ae_mean", "ae_logvar", "caption")
"""What ``compare_step`` can corrupt on purpose: a stored array (ours) or the raw caption (online)."""


@dataclass
class Comparison:
    our_loss: torch.Tensor
    online_loss: torch.Tensor
    loss_equal: bool
    """``torch.equal`` of the two losses."""
    grads_equal: bool
    """``torch.equal`` of every parameter's gradient."""
    loss_rel_error: float
    grad_rel_error: float
    """Largest |Δgrad| over the largest |grad|, over all parameters."""
    t5_dropped: list[bool]
    clip_dropped: list[bool]


def _same_preprocessing(jpg: bytes) -> bool:
    """Samples where Stage 1 and TorchTitan decode alike: RGB, no EXIF rotation (TorchTitan resizes
    CMYK before converting, and the orientation tag is where decoders have differed)."""
    image = Image.open(io.BytesIO(jpg))
    return image.mode == "RGB" and image.getexif().get(ExifTags.Base.Orientation, 1) == 1


def comparable_samples(tars: Path, root: Path) -> tuple[PrecomputedDataset, dict, list[dict], list[int]]:
    """(dataset, raw samples by key, per-sample key and crop box, indices both paths decode alike)."""
    identity = contract.read_identity(root)
    config = parse_job_config("--training.dataset_path", str(root), "--training.img_size", str(identity.image_size))
    dataset = precomputed_dataset(*open_dataset(config), "fail")  # a ladder dataset reads its text half too
    raw = {key: sample for tar in sorted(tars.glob("*.tar")) for key, sample in tar_samples(tar).items()}
    specs = contract.array_specs(dataset.identity)
    readers = [StoreReader(path, dataset.identity, specs) for path in dataset.stores]
    meta = [readers[s].read(local, ("key", "crop_box")) for s, local in map(dataset.locate, range(len(dataset)))]
    usable = [i for i, m in enumerate(meta) if _same_preprocessing(raw[str(m["key"])]["jpg"])]
    return dataset, raw, meta, usable


def fidelity_model() -> FluxModel:
    torch.manual_seed(0)
    model = FluxModel(FLAVORS["flux-tiny"])
    model.init_weights()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param), alpha=0.05)
    return model


def drop_decisions(mean_shape: torch.Size, rank: int) -> tuple[list[bool], list[bool]]:
    """Which samples' T5 and CLIP Stage 2 replaces by the empty prompt at this step: its generator's
    fifth draw, after ε, noise and t (stated here independently of ``step.py``)."""
    generator = step_generator(parse_job_config().stage2.seed, STEP, rank, torch.device("cpu"))
    torch.randn(mean_shape, generator=generator)
    torch.randn(mean_shape, generator=generator)
    torch.rand((mean_shape[0],), generator=generator)
    drop = torch.rand((mean_shape[0], 2), generator=generator) < DROPOUT
    return drop[:, 0].tolist(), drop[:, 1].tolist()


class RoundedToBfloat16(torch.nn.Module):
    """An encoder whose output is rounded to bfloat16 (and handed on as float32), as a bf16 store holds it."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.inner(*args)
        return out.to(torch.bfloat16).to(out.dtype)


def _bare(cls: type, **attributes: object):
    """A trainer object carrying only what ``forward_backward_step`` reads."""
    trainer = cls.__new__(cls)
    trainer.__dict__.update(attributes)
    return trainer


def _corrupted(inputs: dict[str, torch.Tensor], corrupt: str | None) -> dict[str, torch.Tensor]:
    """Stored inputs with one array shifted by one sample (each sample gets its neighbour's), as a
    misaligned read would be; a 1e-3 relative error in T5 or CLIP moves this loss by less than its ulp."""
    if corrupt not in inputs:
        return inputs
    return {**inputs, corrupt: inputs[corrupt].roll(1, dims=0)}


def _max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    scale = max(x.abs().max().item() for x in b)
    return max((x - y).abs().max().item() for x, y in zip(a, b)) / scale


def compare_step(
    tars: Path,
    root: Path,
    assets: Path,
    workdir: Path,
    batch: list[int],
    *,
    rank: int = 0,
    parallel_dims: ParallelDims | None = None,
    corrupt: str | None = None,
    img_size: int = 256,
) -> Comparison:
    """Stage 2's step on dataset samples ``batch`` (from ``root``, this rank's share) and the online step on
    the raw samples they came from, with prompt dropout at ``DROPOUT`` applied as each does it: stored
    empty-prompt encodings (ours), captions replaced by "" before tokenizing (TorchTitan's dataset).
    A bfloat16 dataset is compared with the online encoders' outputs rounded to bfloat16; ``img_size`` is
    the online trainer's (and the dataset's) image side."""
    dims = parallel_dims or ParallelDims(dp_replicate=1, dp_shard=1, cp=1, tp=1, pp=1, ep=1, etp=1, world_size=1)
    config = parse_job_config(
        *("--training.dataset_path", str(root), "--training.classifier_free_guidance_prob", str(DROPOUT)),
        *("--training.img_size", str(img_size)),
    )
    dataset, raw, meta, _ = comparable_samples(tars, root)
    our_inputs, our_labels = collate([dataset[i] for i in batch])
    t5_dropped, clip_dropped = drop_decisions(our_inputs["ae_mean"].shape, rank)

    t5_tok, clip_tok, t5, clip, ae = online_models(assets, workdir)
    if dataset.identity.storage_dtype == "bfloat16":
        t5, clip, ae.encoder = RoundedToBfloat16(t5), RoundedToBfloat16(clip), RoundedToBfloat16(ae.encoder)
    images, t5_tokens, clip_tokens = [], [], []
    for j, i in enumerate(batch):
        sample = raw[str(meta[i]["key"])]
        caption = sample["txt"].decode("utf-8") + (" and more" if corrupt == "caption" else "")
        images.append(online_image(sample["jpg"], meta[i]["crop_box"], pytest.MonkeyPatch, img_size))
        t5_tokens.append(t5_tok.encode("" if t5_dropped[j] else caption))
        clip_tokens.append(clip_tok.encode("" if clip_dropped[j] else caption))

    model = fidelity_model()
    common = {
        "device": torch.device("cpu"),
        "parallel_dims": dims,
        "train_context": dist_utils.get_train_context(False),
        "maybe_enable_amp": contextlib.nullcontext(),
        "loss_fn": build_mse_loss(config),
    }
    online = _bare(
        FluxTrainer, **common, model_parts=[copy.deepcopy(model)], _dtype=torch.float32,
        autoencoder=ae, t5_encoder=t5, clip_encoder=clip,
    )
    ours = _bare(
        PrecomputedFluxTrainer, **common, model_parts=[copy.deepcopy(model)], job_config=config, step=STEP,
        dataloader=SimpleNamespace(dp_rank=rank), ledger=None, model_args=FLAVORS["flux-tiny"],
        empty_prompt=load_empty_prompt(root, dataset.identity), micro_batches=MicroBatchCounter(),
    )
    our_loss = ours.forward_backward_step(input_dict=_corrupted(our_inputs, corrupt), labels=our_labels)
    torch.manual_seed(step_seed(config.stage2.seed, STEP, rank))  # the online step draws ε, noise, t globally
    online_loss = online.forward_backward_step(
        input_dict={"t5_tokens": torch.stack(t5_tokens), "clip_tokens": torch.stack(clip_tokens)},
        labels=torch.stack(images),
    )
    our_grads = [p.grad for p in ours.model_parts[0].parameters()]
    online_grads = [p.grad for p in online.model_parts[0].parameters()]
    if dims.dp_enabled:  # data parallel: what the optimizer sees is the sum over ranks
        for grad in [*our_grads, *online_grads]:
            torch.distributed.all_reduce(grad)
    return Comparison(
        our_loss=our_loss.detach(),
        online_loss=online_loss.detach(),
        loss_equal=torch.equal(our_loss, online_loss),
        grads_equal=all(torch.equal(a, b) for a, b in zip(our_grads, online_grads)),
        loss_rel_error=abs(our_loss.item() - online_loss.item()) / abs(online_loss.item()),
        grad_rel_error=_max_rel(our_grads, online_grads),
        t5_dropped=t5_dropped,
        clip_dropped=clip_dropped,
    )
