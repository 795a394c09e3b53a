"""The resolution ladder (issue 19): a 512 px dataset encoded ``--text-from`` a 256 px one stores images only,
pairs every sample by key, and Stage 2 reads it as it reads a full 512 px encode; moving both keeps them
paired, deleting or rewriting the text dataset is reported in one line."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import re
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
import zarr
from fidelity import comparable_samples, compare_step
from PIL import Image
from test_preflight import table
from test_stage1_pipeline import REPO, TINY_CONFIG
from test_stage1_units import image_bytes
from test_stage2_helpers import parse_job_config
from torchtitan.components.loss import build_mse_loss
from torchtitan.models.flux import FluxModel

from fixtures.sample_data import shard_name
from preflight.table import FAIL, OK
from shared import contract, inspect_shards, pairing
from shared.latent_grid import grid_size
from shared.pairing import PairingError
from stage1_encode import asset_loading
from stage1_encode import preflight as encode_preflight
from stage1_encode import prompts as prompt_cli
from stage1_encode.config import load_config
from stage1_encode.errors import Stage1Error
from stage1_encode.pipeline import Task, run_task
from stage1_encode.preflight import main as encode_main
from stage2_train.data.dataset import collate, load_empty_prompt
from stage2_train.data.loader import build_precomputed_dataloader, precomputed_dataset
from stage2_train.data.paired import PairedDataset
from stage2_train.model.flavors import FLAVORS
from stage2_train.preflight import main as train_main
from stage2_train.validation.images import ImageSampler
from stage2_train.validation.loss import ValidationLoss
from stage2_train.validation.prompt_set import load_prompt_set

pytest_plugins = ["fixtures_assets"]

SIZES = [(640, 520), (700, 560), (300, 400), (520, 800), (600, 600), (400, 300)]
"""Per tar: four images reach 512 px, two only 256 px (the 512 px dataset is a subset)."""


def write_ladder_tars(out: Path, shards: int = 2) -> Path:
    """CC12M-style tars of RGB JPEGs, some large enough for 512 px."""
    out.mkdir(parents=True)
    for s in range(shards):
        with tarfile.open(out / shard_name(s), "w") as tar:
            for i, size in enumerate(SIZES):
                key = f"{s:04d}{i:05d}"
                members = {f"{key}.jpg": image_bytes("RGB", size), f"{key}.txt": f"picture {s}-{i}, {size[0]} wide".encode()}
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return out


def encode(tars: Path, output: Path, assets: Path, size: int, text_from: Path | None = None):
    config = load_config(TINY_CONFIG, [("image.size", str(size))])
    return run_task(config, Task(str(tars), output, assets, text_from=text_from), out=io.StringIO())


def forbid(*_args, **_kwargs):
    raise AssertionError("a --text-from run loaded a text encoder")


@pytest.fixture(scope="module")
def ladder(tiny_assets, tmp_path_factory) -> dict[str, Path]:
    """tars; text256 (full encode at 256); image512 (--text-from text256, T5/CLIP loaders forbidden);
    full512 (full encode at 512, the reference)."""
    root = tmp_path_factory.mktemp("ladder")
    paths = {"tars": write_ladder_tars(root / "tars"), "text256": root / "text256", "image512": root / "image512"}
    encode(paths["tars"], paths["text256"], tiny_assets, 256)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(asset_loading, "load_t5", forbid)
        patch.setattr(asset_loading, "load_clip", forbid)
        encode(paths["tars"], paths["image512"], tiny_assets, 512, text_from=paths["text256"])
    paths["full512"] = root / "full512"
    encode(paths["tars"], paths["full512"], tiny_assets, 512)
    return paths


def test_text_from_stores_images_only_paired_by_key(ladder):
    text, image = contract.read_identity(ladder["text256"]), contract.read_identity(ladder["image512"])
    assert image.text_dataset == text.digest() and text.text_dataset is None
    assert (image.image_size, image.t5_max_length, image.t5_dim, image.clip_dim) == (512, 256, text.t5_dim, text.clip_dim)
    assert image == dataclasses.replace(contract.read_identity(ladder["full512"]), text_dataset=text.digest())
    assert not (ladder["image512"] / contract.EMPTY_PROMPT_STORE).exists()
    record = contract.read_dataset_json(ladder["image512"])
    assert record[pairing.RELPATH_KEY] == "../text256"
    stores = contract.committed_store_paths(ladder["image512"])
    assert [p.name for p in stores] == [p.name for p in contract.committed_store_paths(ladder["text256"])]
    for path in stores:
        group = zarr.open_group(path, mode="r")
        assert set(group.array_keys()) == {"text_index", "ae_mean", "ae_logvar", "key", "caption", "original_size", "crop_box"}
        attrs = contract.read_store_attrs(path)
        assert attrs.num_samples == 4 and attrs.skipped == {"too_small": 2}
        text_keys = zarr.open_group(ladder["text256"] / "shards" / path.name, mode="r")["key"][:]
        assert len(text_keys) == 6
        assert pairing.keys_mismatch(group["key"][:], group["text_index"][:], text_keys) == 0
        assert attrs.text_store == {"name": path.name, "key_checksum": contract.read_store_attrs(ladder["text256"] / "shards" / path.name).checksums["key"]}
    # the image part is a full encode's store less T5 and CLIP (float32 here), plus an int64 per sample
    full = contract.read_store_attrs(contract.committed_store_paths(ladder["full512"])[-1])
    assert full.raw_bytes - attrs.raw_bytes == 4 * (4 * (image.t5_max_length * image.t5_dim + image.clip_dim) - 8)


def test_paired_dataset_reads_what_a_full_encode_stores(ladder):
    paired = precomputed_dataset(ladder["image512"], contract.read_identity(ladder["image512"]), "fail")
    full = precomputed_dataset(ladder["full512"], contract.read_identity(ladder["full512"]), "fail")
    assert isinstance(paired, PairedDataset) and len(paired) == len(full) == 8
    for i in range(len(full)):
        ours, reference = paired[i], full[i]
        for name in contract.TENSORS:
            torch.testing.assert_close(ours[name], reference[name], rtol=1e-5, atol=1e-6)
    empty = load_empty_prompt(ladder["image512"], paired.identity)
    for name, tensor in load_empty_prompt(ladder["text256"], contract.read_identity(ladder["text256"])).items():
        assert torch.equal(empty[name], tensor)


def test_moved_together_stays_paired_deleted_or_rewritten_is_one_line(ladder, tmp_path, monkeypatch):
    moved = tmp_path / "moved"
    for name in ("text256", "image512"):
        shutil.copytree(ladder[name], moved / name)
    record_path = moved / "image512" / contract.DATASET_FILE  # the place it was encoded at is gone
    record = json.loads(record_path.read_text())
    record[pairing.PATH_KEY] = str(tmp_path / "gone" / "text256")
    record_path.write_text(json.dumps(record))
    identity = contract.read_identity(moved / "image512")
    assert PairedDataset(moved / "image512", identity, "fail").text.root == (moved / "text256").resolve()

    # moved apart: found through the search path by its directory name
    apart = tmp_path / "elsewhere"
    apart.mkdir()
    (moved / "text256").rename(apart / "text256")
    with pytest.raises(PairingError) as gone:
        PairedDataset(moved / "image512", identity, "fail")
    assert "not found" in str(gone.value) and "\n" not in str(gone.value)
    monkeypatch.setenv(pairing.SEARCH_PATH_ENV, str(apart))
    assert pairing.locate_text_dataset(moved / "image512") == (apart / "text256").resolve()

    # a text store rewritten under it (its keys' checksum changed)
    store = apart / "text256" / "shards" / shard_name(0).replace(".tar", ".zarr")
    attrs = json.loads((store / "zarr.json").read_text())
    attrs["attributes"]["checksums"]["key"] = "sha256:" + "0" * 64
    (store / "zarr.json").write_text(json.dumps(attrs))
    with pytest.raises(PairingError) as rewritten:
        PairedDataset(moved / "image512", identity, "fail")
    message = str(rewritten.value)
    assert "1 of 2 stores no longer pair" in message and "rewritten" in message and "\n" not in message


def test_keys_the_text_dataset_lacks_are_counted_and_missing_stores_refused(tiny_assets, ladder, tmp_path):
    fewer, one = tmp_path / "fewer-tars", tmp_path / "one-tar"
    fewer.mkdir()
    one.mkdir()
    shutil.copy(ladder["tars"] / shard_name(0), one)
    with tarfile.open(ladder["tars"] / shard_name(0)) as full, tarfile.open(fewer / shard_name(0), "w") as tar:
        for member in full.getmembers():
            if not member.name.startswith("000000000."):  # the text dataset never saw this sample
                tar.addfile(member, full.extractfile(member))
    encode(fewer, tmp_path / "text", tiny_assets, 256)
    encode(one, tmp_path / "image", tiny_assets, 512, text_from=tmp_path / "text")
    attrs = contract.read_store_attrs(contract.committed_store_paths(tmp_path / "image")[0])
    assert attrs.skipped == {"not_in_text_dataset": 1, "too_small": 2} and attrs.num_samples == 3
    with pytest.raises(Stage1Error, match="no committed store for 1 of this task's tars"):
        encode(ladder["tars"], tmp_path / "image", tiny_assets, 512, text_from=tmp_path / "text")


def test_text_from_refuses_what_cannot_pair(tiny_assets, ladder, tmp_path):
    with pytest.raises(Stage1Error, match="is not a dataset"):
        encode(ladder["tars"], tmp_path / "a", tiny_assets, 512, text_from=tmp_path / "nothing")
    with pytest.raises(Stage1Error, match="made with --text-from"):
        encode(ladder["tars"], tmp_path / "b", tiny_assets, 512, text_from=ladder["image512"])


def test_inspect_shows_both_halves_verifies_the_pairing_and_decodes_at_512(ladder, tmp_path, capsys):
    assert inspect_shards.main([str(ladder["image512"]), "--verify", "--workers", "1", "--show", "2", "--grid", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    assert f"from {ladder['text256'].resolve()}" in out and "every store pairs" in out
    assert "image 512 px" in out and "VERIFIED: 2 stores, 8 samples" in out
    assert Image.open(tmp_path / "g.png").size == grid_size(2, 512)

    broken = tmp_path / "broken"
    for name in ("text256", "image512"):
        shutil.copytree(ladder[name], broken / name)
    shutil.rmtree(broken / "text256" / "shards" / shard_name(1).replace(".tar", ".zarr"))
    assert inspect_shards.main([str(broken / "image512"), "--verify", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "no longer pair" in line]
    head = out.splitlines()
    assert head[1].startswith("VERIFY FAILED") and "1 of 2 stores no longer pair" in head[2], out  # under the headline
    assert len(lines) >= 3, out  # and in the text section and the verify findings


def test_512_step_equals_torchtitans_online_step(one_rank_group, ladder, tiny_assets, tmp_path):
    """Latents from the 512 px image dataset, text from the 256 px one: loss and every gradient
    ``torch.equal`` to TorchTitan's online step at 512 px, at prompt dropout 0.447."""
    _, _, _, usable = comparable_samples(ladder["tars"], ladder["image512"])
    result = compare_step(ladder["tars"], ladder["image512"], tiny_assets, tmp_path, usable[:4], img_size=512)
    assert len(set(result.t5_dropped)) == 2 and len(set(result.clip_dropped)) == 2, result
    assert result.loss_equal and result.grads_equal, result


def test_sbatch_trains_512_from_a_256_runs_weights(slurm_cluster, ladder, tmp_path):
    """256 px run whose last checkpoint is weights only (as configs/flux_schnell.toml saves it), then a 512 px
    run on the --text-from dataset that starts from it (TorchTitan's initial load, model only): fresh
    optimizer and schedule, step 1 again."""
    common = ("--training.steps", "3", "--training.local_batch_size", "2", "--checkpoint.enable", "--checkpoint.interval", "3")
    runs = {}
    for name, config, dataset, extra in (
        ("256", REPO / "configs" / "flux_tiny.toml", ladder["text256"], ("--checkpoint.last_save_model_only",)),
        ("512", REPO / "configs" / "flux_tiny_512.toml", ladder["image512"],
         ("--checkpoint.initial_load_path", tmp_path / "run256" / "checkpoint" / "step-3")),
    ):
        job = slurm_cluster.submit(
            REPO / "slurm" / "train.sbatch",
            *("--job.config_file", config, "--training.dataset_path", dataset, "--job.dump_folder", tmp_path / f"run{name}"),
            *common, *extra,
            sbatch_opts=["--output", str(tmp_path / f"job{name}.out")],
            env_extra={"NPROC_PER_NODE": "1"},
            timeout=240,
        )
        runs[name] = job.log()
        assert job.returncode == 0, runs[name][-6000:]
    assert (tmp_path / "run256" / "checkpoint" / "step-3").is_dir() and (tmp_path / "run512" / "checkpoint" / "step-3").is_dir()
    log = runs["512"]
    assert f"Loading the checkpoint from {tmp_path / 'run256' / 'checkpoint' / 'step-3'}." in log
    assert "8 samples in 2 committed stores" in log  # the 512 px image dataset, read with the 256 px dataset's text
    losses = [float(m) for m in re.findall(r"step:\s+1\s+loss:\s+(\S+)", log)]
    assert losses and all(math.isfinite(loss) for loss in losses)  # counting starts again at step 1


def test_preflights_check_the_pairing_and_the_image_part_space(ladder, tiny_assets, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(encode_preflight, "free_bytes", lambda path: 100 << 30)
    args = ["--config", str(TINY_CONFIG), "--input", str(ladder["tars"]), "--assets", str(tiny_assets),
            "--output", str(tmp_path / "new512"), "--image.size", "512"]
    assert encode_main([*args, "--text-from", str(ladder["text256"])]) == 0
    rows = table(capsys.readouterr().out)
    assert rows["text dataset"] == (OK, f"{ladder['text256'].resolve()}: identity "
                                        f"{contract.read_identity(ladder['text256']).digest()}, a store for each of 2 tars")
    # Tiny float32 image part: 4 B x 2 x 16 x 64 x 64 / 1.4 compression = 366 KiB (no T5, no CLIP).
    assert rows["output space"][0] == OK and rows["output space"][1].endswith("x 366 KiB"), rows["output space"]
    assert encode_main([*args, "--text-from", str(ladder["image512"])]) == 1
    assert table(capsys.readouterr().out)["text dataset"][0] == FAIL

    moved = tmp_path / "moved"
    shutil.copytree(ladder["image512"], moved / "image512")
    record = json.loads((moved / "image512" / contract.DATASET_FILE).read_text())
    record[pairing.RELPATH_KEY], record[pairing.PATH_KEY] = "../text256", str(tmp_path / "gone" / "text256")
    (moved / "image512" / contract.DATASET_FILE).write_text(json.dumps(record))
    train = ["--job.config_file", str(REPO / "configs" / "flux_tiny_512.toml"), "--job.dump_folder", str(tmp_path / "dump")]
    assert train_main([*train, "--training.dataset_path", str(ladder["image512"])]) == 0
    capsys.readouterr()
    assert train_main([*train, "--training.dataset_path", str(moved / "image512")]) == 1
    status, detail = table(capsys.readouterr().out)["dataset"]
    assert status == FAIL and "not found" in detail and pairing.SEARCH_PATH_ENV in detail


def test_paired_loader_is_disjoint_per_rank_and_resumes(ladder):
    """The sampler's guarantees carry over: indices are the image dataset's, text is fetched per sample."""
    config = parse_job_config(
        *("--training.dataset_path", str(ladder["image512"]), "--training.img_size", "512"),
        *("--training.local_batch_size", "2", "--training.dataloader.num_workers", "1"),
    )
    full = precomputed_dataset(ladder["full512"], contract.read_identity(ladder["full512"]), "fail")
    first_epoch = []
    for rank in range(2):
        loader = build_precomputed_dataloader(2, rank, config)
        stream = iter(loader)
        seen = [next(stream) for _ in range(3)]  # 2 batches per epoch: crosses into epoch 1
        state = loader.state_dict()
        expected = [next(stream) for _ in range(2)]
        resumed = build_precomputed_dataloader(2, rank, config)
        resumed.load_state_dict(state)
        for (want_inputs, want_labels), (got_inputs, got_labels) in zip(expected, itertools.islice(iter(resumed), 2)):
            assert torch.equal(want_labels, got_labels) and all(torch.equal(want_inputs[k], got_inputs[k]) for k in want_inputs)
        for inputs, labels in seen:
            reference, _ = collate([full[i] for i in labels.tolist()])
            for name in contract.TENSORS:
                torch.testing.assert_close(inputs[name], reference[name], rtol=1e-5, atol=1e-6)
        first_epoch.append({i for _, labels in seen[:2] for i in labels.tolist()})
    assert not first_epoch[0] & first_epoch[1] and len(first_epoch[0] | first_epoch[1]) == 8


def test_validation_loss_and_sample_images_at_512(ladder, tiny_assets, tmp_path):
    """Validation reads a --text-from dataset as it reads a full one; sample images come out at 512 px
    from a prompt set (text only, resolution-free) made with the same assets."""
    config = parse_job_config(
        *("--training.dataset_path", str(ladder["image512"]), "--training.img_size", "512"),
        *("--validation.local_batch_size", "4", "--job.dump_folder", str(tmp_path / "run")),
    )
    torch.manual_seed(0)
    model = FluxModel(FLAVORS["flux-tiny"])
    model.init_weights()
    model.eval()
    ae = FLAVORS["flux-tiny"].autoencoder_params
    paired, full = (
        ValidationLoss(precomputed_dataset(root, contract.read_identity(root), "fail"), config, 0, 1)(
            model, ae, torch.device("cpu"), build_mse_loss(config)
        )
        for root in (ladder["image512"], ladder["full512"])
    )
    assert paired == pytest.approx(full, rel=1e-5)

    (tmp_path / "prompts.txt").write_text("a red fox in the snow\na blue car\n")
    assert prompt_cli.main([
        *("--prompts", str(tmp_path / "prompts.txt"), "--output", str(tmp_path / "prompts")),
        *("--assets", str(tiny_assets), "--config", str(TINY_CONFIG)),
    ]) == 0
    identity = contract.read_identity(ladder["image512"])
    sampler = ImageSampler(load_prompt_set(tmp_path / "prompts", identity, -1), ladder["image512"], identity, config)
    latents = sampler.sample(model, torch.device("cpu"))
    assert latents.shape == (2, identity.latent_channels, 64, 64)
    path, grid = sampler.write(latents, 1)
    assert path.is_file() and grid.size == grid_size(2, 512)
