"""What the two trainers read: CC12M-format tars, a tokenizer and encoder configs (online), a Stage 1
dataset of real shapes and random values (Stage 2). Each is written once under the work directory."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tarfile
from pathlib import Path

from fixtures.sample_data import write_sample_tars
from fixtures.synthetic import schnell_identity, write_synthetic_dataset
from shared import contract
from stage2_train.model.flavors import FLAVORS

T5_XXL = {
    "architectures": ["T5EncoderModel"], "model_type": "t5", "d_model": 4096, "d_ff": 10240, "d_kv": 64,
    "num_heads": 64, "num_layers": 24, "num_decoder_layers": 24, "feed_forward_proj": "gated-gelu",
    "vocab_size": 32128, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0, "is_encoder_decoder": True,
    "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
}  # fmt: skip
CLIP_L_TEXT = {
    "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": 768,
    "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12, "max_position_embeddings": 77,
    "vocab_size": 49408, "hidden_act": "quick_gelu", "projection_dim": 768, "layer_norm_eps": 1e-5,
    "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
}  # fmt: skip
TINY_WIDTHS = {"t5": {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 2, "num_decoder_layers": 2, "vocab_size": 1024},
               "clip": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
                        "projection_dim": 32, "vocab_size": 1024}}  # fmt: skip
"""flux-tiny's context and vector widths (32)."""


@dataclasses.dataclass(frozen=True)
class OnlineInputs:
    tars: Path
    tokenizer: Path
    t5: Path
    clip: Path


def _once(out: Path, write) -> Path:
    """``write(out)`` unless a finished copy is there (marked ``.complete``)."""
    if not (out / ".complete").exists():
        shutil.rmtree(out, ignore_errors=True)
        write(out)
        (out / ".complete").touch()
    return out


GENERATOR_SIZE = 256
"""The image size ``write_sample_tars``' shapes are drawn for at ``scale`` 1 (one in eight smaller)."""


def online_inputs(root: Path, samples: int, tiny: bool, image_size: int) -> OnlineInputs:
    """Tars whose images are scaled to ``image_size``: TorchTitan's loader skips an image whose short
    side is below it, so at 512 px unscaled tars would lose most samples, not one in eight."""
    shards = 4
    scale = -(-image_size // GENERATOR_SIZE)
    tars = _once(root / f"tars-{samples}-x{scale}",
                 lambda out: write_sample_tars(out, shards, -(-samples // shards), seed=0, scale=scale))  # fmt: skip
    captions = []
    for path in sorted(tars.glob("*.tar")):
        with tarfile.open(path) as tar:
            captions += [tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".txt")]
    tokenizer = _once(root / "tokenizer", lambda out: write_tokenizer(out, captions))
    size = "tiny" if tiny else "real"
    t5 = _once(root / size / "t5", lambda out: _write_json(out / "config.json", T5_XXL | (TINY_WIDTHS["t5"] if tiny else {})))
    clip = _once(root / size / "clip", lambda out: _write_json(out / "config.json", CLIP_L_TEXT | (TINY_WIDTHS["clip"] if tiny else {})))
    if "clip" in str(t5).lower():
        raise SystemExit(f"the work directory must not contain 'clip' ({t5}): TorchTitan would take T5 for CLIP")
    return OnlineInputs(tars, tokenizer, t5, clip)


def stage1_dataset(root: Path, flavor: str, samples: int, image_size: int, mean_t5_tokens: float | None = None) -> Path:
    """A Stage 1 dataset for ``flavor`` at ``image_size`` (bf16 storage, as configs/encode_cc12m.toml writes);
    with ``mean_t5_tokens`` a compact-text one whose captions are that long on average."""
    text_mode = None if mean_t5_tokens is None else contract.COMPACT_TEXT
    identity = dataclasses.replace(schnell_identity("bfloat16", text_mode), image_size=image_size)
    if flavor == "flux-tiny":
        args = FLAVORS[flavor]
        identity = dataclasses.replace(identity, t5_dim=args.context_in_dim, clip_dim=args.vec_in_dim,
                                       ae_params=dataclasses.asdict(args.autoencoder_params))  # fmt: skip
    stores = 4
    name = f"stage1-{flavor}-{image_size}px-{samples}" + ("" if mean_t5_tokens is None else f"-compact{mean_t5_tokens:g}")
    compact = {} if mean_t5_tokens is None else {"mean_t5_tokens": mean_t5_tokens}
    return _once(root / name, lambda out: write_synthetic_dataset(out, identity, stores, -(-samples // stores), **compact))


def write_tokenizer(out: Path, captions: list[str]) -> None:
    """A word-level ``tokenizer.json`` (+ config with BOS/EOS/PAD) for TorchTitan's test tokenizer;
    captions are padded to 256 (T5) and 77 (CLIP) tokens, so the encoders' cost is the real one."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(captions, trainers.WordLevelTrainer(vocab_size=1000, special_tokens=["<pad>", "</s>", "<unk>", "<s>"]))
    tok.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"})


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
