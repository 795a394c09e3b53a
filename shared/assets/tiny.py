"""Tiny random-weight FLUX.1-schnell assets in the real repository's layout, for CPU tests.

Same formats as the real files (``save_pretrained`` safetensors + ``config.json``, ``ae.safetensors`` in
FLUX's key layout, real tokenizers), so the product's loading code cannot tell them apart. The
dimensions are fixed: a matching ``flux-tiny`` transformer hard-codes ``vec_in_dim`` = CLIP hidden
(32), ``context_in_dim`` = T5 ``d_model`` (32) and ``in_channels`` = 16 z-channels x 2 x 2 = 64.
Files are byte-identical for one seed (and one torch/transformers install).
"""

from __future__ import annotations

from pathlib import Path

from shared.assets import tiny_tokenizers

T5_DIMS = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
CLIP_DIMS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
AE_DIMS = dict(
    resolution=256, in_channels=3, ch=32, out_ch=3, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=16,
    scale_factor=0.3611, shift_factor=0.1159,
)


def write_tiny_assets(out: str | Path, seed: int = 0) -> Path:
    """Write ``ae.safetensors``, ``text_encoder{,_2}/`` and ``tokenizer{,_2}/`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t5_vocab = tiny_tokenizers.write_t5_tokenizer(out / "tokenizer_2")
    clip_vocab = tiny_tokenizers.write_clip_tokenizer(out / "tokenizer")
    _write_t5(out / "text_encoder_2", t5_vocab, seed)
    _write_clip(out / "text_encoder", clip_vocab, seed)
    _write_ae(out / "ae.safetensors", seed)
    (out / "README.md").write_text(
        f"Tiny random-weight assets in the FLUX.1-schnell layout (seed {seed}), made by\n"
        f"`python -m shared.assets tiny`. For tests only: the outputs mean nothing.\n"
    )
    return out


def _write_t5(out: Path, vocab_size: int, seed: int) -> None:
    import torch
    from transformers import T5Config, T5EncoderModel

    # The remaining fields are those of FLUX's text_encoder_2/config.json (T5 v1.1).
    config = T5Config(
        **T5_DIMS, vocab_size=vocab_size, feed_forward_proj="gated-gelu", num_decoder_layers=T5_DIMS["num_layers"],
        relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
        layer_norm_epsilon=1e-6, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    T5EncoderModel(config).save_pretrained(out)


def _write_clip(out: Path, vocab: dict[str, int], seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    bos, eos = vocab[tiny_tokenizers.CLIP_BOS], vocab[tiny_tokenizers.CLIP_EOS]
    # pooler_output is the hidden state at the first eos_token_id (or, for the legacy id 2 that the real
    # config carries, at the argmax token id); with <|endoftext|> as the top id both pick the same slot.
    config = CLIPTextConfig(
        **CLIP_DIMS, vocab_size=len(vocab), max_position_embeddings=77, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
    )
    torch.manual_seed(seed)
    model = CLIPTextModel(config)
    model.save_pretrained(out)
    # transformers 5 saves a fresh CLIPTextModel without the ``text_model.`` prefix that published CLIP
    # checkpoints (FLUX's included) carry; rewrite the published layout so tests load what production loads.
    state = {f"text_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def _write_ae(path: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from torchtitan.models.flux.model.autoencoder import AutoEncoder, AutoEncoderParams

    torch.manual_seed(seed)
    ae = AutoEncoder(AutoEncoderParams(**AE_DIMS))
    # TorchTitan's module names are FLUX's key layout (encoder.*, decoder.*).
    save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(path))

