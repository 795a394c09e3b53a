"""The real ``slurm/encode_array.sbatch`` on the local Slurm cluster: a 2-task array over 4 tars yields
every valid sample once, and the stored tensors are what TorchTitan's own online path computes (HF
datasets decode -> ``_process_cc12m_image`` -> AE encoder; ``FluxTokenizer`` -> ``FluxEmbedder``)."""

import io
import tarfile
from pathlib import Path

import datasets
import torch
import zarr
from PIL import Image
from test_stage1_pipeline import TINY_CONFIG, verified_stores

from fixtures import write_sample_tars
from fixtures.tiny import AE_DIMS
from shared import contract, heartbeat

pytest_plugins = ["fixtures_assets"]

REPO = Path(__file__).resolve().parents[1]


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    with tarfile.open(path) as tar:
        samples: dict[str, dict[str, bytes]] = {}
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def online_models(assets: Path, tmp_path: Path):
    """TorchTitan's tokenizers, embedders and AE on the same files (it picks CLIP by "clip" in the path)."""
    from torchtitan.models.flux.model.autoencoder import AutoEncoderParams, load_ae
    from torchtitan.models.flux.model.hf_embedder import FluxEmbedder
    from torchtitan.models.flux.tokenizer import FluxTokenizer

    for name, target in (("clip_tokenizer", "tokenizer"), ("clip_text_encoder", "text_encoder")):
        (tmp_path / name).symlink_to(assets / target, target_is_directory=True)
    t5_tok = FluxTokenizer(str(assets / "tokenizer_2"), max_length=256)
    clip_tok = FluxTokenizer(str(tmp_path / "clip_tokenizer"), max_length=77)
    t5 = FluxEmbedder(str(assets / "text_encoder_2"))
    clip = FluxEmbedder(str(tmp_path / "clip_text_encoder"))
    ae = load_ae(str(assets / "ae.safetensors"), AutoEncoderParams(**AE_DIMS), device="cpu", dtype=torch.float32)
    return t5_tok, clip_tok, t5, clip, ae


def online_image(jpg: bytes, crop_box, monkeypatch, size: int = 256) -> torch.Tensor:
    from torchtitan.models.flux.flux_datasets import _process_cc12m_image

    img = datasets.Image().decode_example({"path": None, "bytes": jpg})
    with monkeypatch.context() as m:  # the online random crop, at the offset Stage 1 recorded
        m.setattr(torch, "randint", lambda low, high, size: torch.tensor([max(crop_box[0], crop_box[1])]))
        return _process_cc12m_image(img, output_size=size)


def close(stored, expected) -> None:
    torch.testing.assert_close(torch.as_tensor(stored), expected.float(), rtol=1e-4, atol=1e-5)


def test_array_job_encodes_what_torchtitan_computes(slurm_cluster, tiny_assets, tmp_path, monkeypatch):
    tars = write_sample_tars(tmp_path / "tars", shards=4, per_shard=6)
    dataset = tmp_path / "ds"
    job = slurm_cluster.submit(
        REPO / "slurm" / "encode_array.sbatch",
        "--input", tmp_path / "tars", "--output", dataset, "--assets", tiny_assets, "--config", TINY_CONFIG,
        sbatch_opts=["--array=0-1", f"--output={tmp_path}/%x_%A_%a.out", "--cpus-per-task=1"],
        timeout=300,
    )
    assert (job.returncode, job.state) == (0, "COMPLETED"), job.logs()
    assert all("done: 2 stores committed" in job.log(task=i) for i in (0, 1)), job.logs()

    stores = verified_stores(dataset)
    assert sorted(stores) == [contract.store_name(t) for t in tars]
    samples = {key: members for t in tars for key, members in tar_samples(t).items()}
    valid = {k for k, m in samples.items() if min(Image.open(io.BytesIO(m["jpg"])).size) >= 256}
    assert 0 < len(valid) < len(samples)
    assert sum(a.num_samples for a in stores.values()) == len(valid)
    assert sum(sum(a.skipped.values()) for a in stores.values()) == len(samples) - len(valid)
    beats = heartbeat.read_heartbeats(dataset)
    assert [b.state for b in beats] == ["done", "done"]
    assert sorted(s for b in beats for s in b.sources) == sorted(stores)

    t5_tok, clip_tok, t5, clip, ae = online_models(tiny_assets, tmp_path)
    empty = zarr.open_group(dataset / contract.EMPTY_PROMPT_STORE, mode="r")
    with torch.inference_mode():
        close(empty["t5"][:], t5(t5_tok.encode([""])))
        close(empty["clip"][:], clip(clip_tok.encode([""])))
        checked = 0
        for name in stores:
            group = zarr.open_group(contract.shards_dir(dataset) / name, mode="r")
            keys = list(group["key"][:])
            assert set(keys) <= valid
            for row in (0, len(keys) - 1):  # several samples: first and last of every store
                members = samples[keys[row]]
                caption = members["txt"].decode()
                assert list(group["caption"][:])[row] == caption
                close(group["t5"][row : row + 1], t5(t5_tok.encode([caption])))
                close(group["clip"][row : row + 1], clip(clip_tok.encode([caption])))
                image = online_image(members["jpg"], group["crop_box"][row], monkeypatch)
                mean, logvar = torch.chunk(ae.encoder(image[None]), 2, dim=1)
                close(group["ae_mean"][row : row + 1], mean)
                close(group["ae_logvar"][row : row + 1], logvar)
                checked += 1
    assert checked == 8
