"""stage1_encode.asset_loading on the tiny assets: it computes what TorchTitan's own classes compute from the same files,
infers the AE architecture (tiny and real schnell), and checks and hashes the assets directory."""

import hashlib
import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fixtures import corpus
from fixtures.tiny import AE_DIMS
from shared.ae import autoencoder_params, load_autoencoder
from stage1_encode import asset_loading

pytest_plugins = ["fixtures_assets"]

CAPTIONS = [
    *(corpus.caption(random.Random(i), long=i % 3 == 0) for i in range(6)),
    "",
    "  Mixed   CASE, whitespace\tand punctuation!! ",
    "Unicode: café ☃ 🎉 Zürich",
    "specials <extra_id_3> <|endoftext|> </s>",
]


@pytest.fixture
def assets_copy(tiny_assets, tmp_path) -> Path:
    """A private, changeable copy (without the hash cache other tests may have left in the original)."""
    return Path(shutil.copytree(tiny_assets, tmp_path / "assets", ignore=shutil.ignore_patterns(".sha256-cache*")))


def torchtitan_view(tiny_assets: Path, tmp_path: Path) -> dict[str, str]:
    """TorchTitan picks CLIP by "clip" in the path; FLUX's folder names lack it, so link them under such names."""
    links = {}
    for name, target in (("clip_tokenizer", "tokenizer"), ("clip_text_encoder", "text_encoder")):
        (tmp_path / name).symlink_to(tiny_assets / target, target_is_directory=True)
        links[name] = str(tmp_path / name)
    assert "clip" not in str(tiny_assets).lower()
    return links


def test_tokenizers_match_flux_tokenizer(tiny_assets, tmp_path):
    from torchtitan.models.flux.tokenizer import FluxTokenizer

    links = torchtitan_view(tiny_assets, tmp_path)
    t5, clip = asset_loading.load_tokenizers(tiny_assets, t5_max_length=256)
    ref_t5 = FluxTokenizer(str(tiny_assets / "tokenizer_2"), max_length=256)
    ref_clip = FluxTokenizer(links["clip_tokenizer"], max_length=77)
    assert not ref_t5.is_clip and ref_clip.is_clip
    assert torch.equal(t5.encode(CAPTIONS), ref_t5.encode(CAPTIONS))
    assert torch.equal(clip.encode(CAPTIONS), ref_clip.encode(CAPTIONS))


def test_tokenizers_pad_and_truncate(tiny_assets):
    import sentencepiece as spm

    t5, clip = asset_loading.load_tokenizers(tiny_assets, t5_max_length=256)
    short, long = "A red dog on the beach.", " ".join(corpus.caption(random.Random(i)) for i in range(40))
    t5_ids, clip_ids = t5.encode([short, long]), clip.encode([short, long])
    assert t5_ids.shape == (2, 256) and clip_ids.shape == (2, 77) and t5_ids.dtype == clip_ids.dtype == torch.int64
    eos, pad = clip.hf_tokenizer.eos_token_id, clip.hf_tokenizer.pad_token_id
    # T5: text, </s> (1), then <pad> (0); a long caption is cut and still ends in </s>.
    sp = spm.SentencePieceProcessor(model_file=str(tiny_assets / "tokenizer_2" / "spiece.model"))
    n = len(sp.encode(short)) + 1
    assert t5_ids[0, :n].tolist() == sp.encode(short) + [1] and not t5_ids[0, n:].any()
    assert t5_ids[1, -1] == 1 and t5_ids[1, :-1].ne(0).all()
    # CLIP: <|startoftext|> text <|endoftext|>, padded with <|endoftext|>; cut at 77 with the end token last.
    assert clip_ids[:, 0].eq(clip.hf_tokenizer.bos_token_id).all() and pad == eos
    assert clip_ids[1, -1] == eos and clip_ids[1, 1:-1].ne(eos).all()
    assert clip_ids[0, 1:].eq(eos).sum() == 77 - len(clip.hf_tokenizer.tokenize(short)) - 1


def test_sentencepiece_and_hf_t5_tokenizer_agree(tiny_assets):
    """The T5 tokenizer is the real sentencepiece model: HF's tokenizer.json reproduces spm exactly."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_assets / "tokenizer_2" / "spiece.model"))
    t5, _ = asset_loading.load_tokenizers(tiny_assets, t5_max_length=512)
    texts = [c for c in CAPTIONS if "<" not in c]  # spm does not know HF's special tokens
    ids = t5.encode(texts)
    for text, row in zip(texts, ids.tolist()):
        expected = sp.encode(text) + [1]
        assert row[: len(expected)] == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_text_encoders_match_flux_embedder(tiny_assets, tmp_path, dtype):
    from torchtitan.models.flux.model.hf_embedder import FluxEmbedder

    links = torchtitan_view(tiny_assets, tmp_path)
    t5_tok, clip_tok = asset_loading.load_tokenizers(tiny_assets, t5_max_length=256)
    t5_ids, clip_ids = t5_tok.encode(CAPTIONS), clip_tok.encode(CAPTIONS)
    t5, clip = asset_loading.load_t5(tiny_assets, "cpu", dtype), asset_loading.load_clip(tiny_assets, "cpu", dtype)
    # As FluxTrainer builds them: FluxEmbedder(path).to(device, dtype).
    ref_t5 = FluxEmbedder(str(tiny_assets / "text_encoder_2")).to(device="cpu", dtype=dtype)
    ref_clip = FluxEmbedder(links["clip_text_encoder"]).to(device="cpu", dtype=dtype)
    assert ref_clip.is_clip and not ref_t5.is_clip
    with torch.no_grad():
        out_t5, out_clip = t5(t5_ids), clip(clip_ids)
        assert torch.equal(out_t5, ref_t5(t5_ids)) and torch.equal(out_clip, ref_clip(clip_ids))
    assert out_t5.shape == (len(CAPTIONS), 256, 32) and out_clip.shape == (len(CAPTIONS), 32)
    assert out_t5.dtype == out_clip.dtype == dtype
    assert not any(p.requires_grad for p in [*t5.parameters(), *clip.parameters()])


def test_clip_pools_at_first_end_token(tiny_assets):
    _, clip_tok = asset_loading.load_tokenizers(tiny_assets, t5_max_length=256)
    clip = asset_loading.load_clip(tiny_assets)
    ids = clip_tok.encode(CAPTIONS)
    with torch.no_grad():
        out = clip.hf_module(input_ids=ids)
    first_eos = (ids == clip_tok.hf_tokenizer.eos_token_id).int().argmax(-1)
    assert torch.equal(out.pooler_output, out.last_hidden_state[torch.arange(len(ids)), first_eos])


def test_autoencoder_matches_load_ae(tiny_assets):
    from torchtitan.models.flux.model.autoencoder import AutoEncoderParams, load_ae

    params = autoencoder_params(tiny_assets)
    assert params == AutoEncoderParams(**AE_DIMS)
    ae = load_autoencoder(tiny_assets, "cpu", torch.float32)
    ref = load_ae(str(tiny_assets / "ae.safetensors"), AutoEncoderParams(**AE_DIMS), device="cpu", dtype=torch.float32)
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        moments = ae.encoder(images)
        assert torch.equal(moments, ref.encoder(images))
    assert moments.shape == (2, 2 * 16, 32, 32)  # 8x downsampling, mean and logvar of 16 channels


def test_autoencoder_params_of_real_schnell_file(tmp_path):
    """The real schnell AE's tensor layout (built on the meta device, written as a valid sparse
    safetensors file: header plus a hole) infers exactly TorchTitan's flux-schnell params."""
    from torchtitan.models.flux import flux_args
    from torchtitan.models.flux.model.autoencoder import AutoEncoder

    schnell = flux_args["flux-schnell"].autoencoder_params
    with torch.device("meta"):
        shapes = {k: list(v.shape) for k, v in AutoEncoder(schnell).state_dict().items()}
    write_sparse_safetensors(tmp_path / "ae.safetensors", shapes)
    assert autoencoder_params(tmp_path) == schnell


def write_sparse_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    header, offset = {}, 0
    for key in sorted(shapes):
        size = 4 * math.prod(shapes[key])
        header[key] = {"dtype": "F32", "shape": shapes[key], "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        f.truncate(8 + len(blob) + offset)


def test_load_autoencoder_refuses_missing_or_extra_keys(assets_copy):
    path = assets_copy / "ae.safetensors"
    state = load_file(path)
    state["encoder.extra.weight"] = state.pop("decoder.mid.attn_1.q.weight")
    save_file(state, path)
    with pytest.raises(asset_loading.AssetsError, match=r"decoder\.mid\.attn_1\.q\.weight.*encoder\.extra\.weight"):
        load_autoencoder(assets_copy)


def test_text_encoder_refuses_incomplete_weights(assets_copy, caplog):
    """A missing tensor would be initialised randomly: refused. An extra one is ignored, as TorchTitan does."""
    path = assets_copy / "text_encoder" / "model.safetensors"
    state = load_file(path)
    save_file(state | {"text_model.extra": torch.zeros(1)}, path, metadata={"format": "pt"})
    asset_loading.load_clip(assets_copy)
    assert "ignoring tensors" in caplog.text and "extra" in caplog.text
    del state["text_model.final_layer_norm.weight"]
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(asset_loading.AssetsError, match="final_layer_norm.weight"):
        asset_loading.load_clip(assets_copy)


def test_sharded_t5_checkpoint(assets_copy):
    """T5-XXL ships as an index plus shards: loading and checking follow the index."""
    from transformers import T5EncoderModel

    folder = assets_copy / "text_encoder_2"
    model = T5EncoderModel.from_pretrained(folder)
    shutil.rmtree(folder)
    model.save_pretrained(folder, max_shard_size="100KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    asset_loading.load_t5(assets_copy)
    assert set(asset_loading.asset_hashes(assets_copy)["t5"]) == {
        f"text_encoder_2/{p.name}" for p in folder.iterdir() if not p.name.startswith(".")
    }
    shards[-1].unlink()
    with pytest.raises(asset_loading.AssetsError, match=f"text_encoder_2/{shards[-1].name}: missing"):
        asset_loading.check_assets(assets_copy)


def test_check_assets_lists_every_problem(assets_copy, tmp_path):
    asset_loading.check_assets(assets_copy)
    (assets_copy / "tokenizer_2" / "spiece.model").unlink()
    (assets_copy / "text_encoder" / "model.safetensors").unlink()
    with open(assets_copy / "ae.safetensors", "r+b") as f:
        f.truncate(1000)  # an interrupted download
    with pytest.raises(asset_loading.AssetsError) as error:
        asset_loading.check_assets(assets_copy)
    lines = str(error.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        "ae.safetensors", "text_encoder/model.safetensors", "tokenizer_2/spiece.model"
    ]
    with pytest.raises(asset_loading.AssetsError, match="does not exist"):
        asset_loading.check_assets(tmp_path / "nowhere")


def test_asset_hashes_are_sha256_and_cached(assets_copy, monkeypatch):
    hashes = asset_loading.asset_hashes(assets_copy)
    assert set(hashes) == {"t5", "clip", "ae", "t5_tokenizer", "clip_tokenizer"}
    assert set(hashes["clip_tokenizer"]) == {f"tokenizer/{n}" for n in asset_loading.TOKENIZER_FILES["tokenizer"]}
    for files in hashes.values():
        for rel, digest in files.items():
            assert digest == hashlib.sha256((assets_copy / rel).read_bytes()).hexdigest()
    assert (assets_copy / asset_loading.HASH_CACHE).is_file()

    # Second call: nothing re-hashed. A changed file: only it.
    hashed = []
    real_sha256 = asset_loading._sha256
    monkeypatch.setattr(asset_loading, "_sha256", lambda p: hashed.append(p.name) or real_sha256(p))
    assert asset_loading.asset_hashes(assets_copy) == hashes and hashed == []
    config = assets_copy / "text_encoder" / "config.json"
    config.write_text(config.read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers":  2'))
    changed = asset_loading.asset_hashes(assets_copy)
    assert hashed == ["config.json"]
    assert changed["clip"]["text_encoder/config.json"] != hashes["clip"]["text_encoder/config.json"]


def test_asset_hashes_on_read_only_assets(assets_copy, monkeypatch, caplog):
    def refuse(*args):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(asset_loading.os, "replace", refuse)  # root ignores chmod, so fail the commit itself
    first = asset_loading.asset_hashes(assets_copy)
    assert asset_loading.asset_hashes(assets_copy) == first
    assert not (assets_copy / asset_loading.HASH_CACHE).exists()
    assert not [p for p in assets_copy.iterdir() if p.name.startswith(asset_loading.HASH_CACHE)]
    assert "recomputed on every run" in caplog.text
