"""``FusedT5Encoder`` computes HF's T5 encoder from the same weights (Stage 1's T5 path)."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5EncoderModel

from stage1_encode import asset_loading
from stage1_encode.encode import load_encoders
from shared.tokens import real_lengths
from stage1_encode.t5_fused import CompactT5, FusedT5Encoder

pytest_plugins = ["fixtures_assets"]


def _tiny_t5(dtype: torch.dtype) -> T5EncoderModel:
    torch.manual_seed(0)
    config = T5Config(d_model=64, d_ff=96, num_layers=3, num_heads=4, d_kv=16, vocab_size=500, feed_forward_proj="gated-gelu")
    return T5EncoderModel(config).eval().requires_grad_(False).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equals_hf_on_cpu(dtype):
    hf = _tiny_t5(dtype)
    tokens = torch.randint(0, 500, (3, 40))
    with torch.inference_mode():
        expected = hf(input_ids=tokens).last_hidden_state
        got = FusedT5Encoder(hf)(tokens)
    assert got.dtype == dtype and got.shape == (3, 40, 64)
    assert torch.equal(got, expected)


def test_position_bias_and_every_layer_count():
    """Dropping the relative position bias or a layer changes the output: the equality above is not vacuous."""
    hf = _tiny_t5(torch.float32)
    tokens = torch.randint(0, 500, (2, 24))
    fused = FusedT5Encoder(hf)
    with torch.inference_mode():
        expected = hf(input_ids=tokens).last_hidden_state
        fused.position_bias.relative_attention_bias.weight.zero_()
        assert not torch.allclose(fused(tokens), expected, atol=1e-4)
        hf = _tiny_t5(torch.float32)
        fused = FusedT5Encoder(hf)
        del fused.layers[-1]
        assert not torch.allclose(fused(tokens), expected, atol=1e-4)


def test_refuses_an_ungated_t5():
    config = T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, vocab_size=100, feed_forward_proj="relu")
    with pytest.raises(ValueError, match="gated"):
        FusedT5Encoder(T5EncoderModel(config))


def test_stage1_loads_t5_fused_and_equal_to_the_assets_hf_model(tiny_assets):
    encoders = load_encoders(tiny_assets, torch.device("cpu"), torch.bfloat16)
    reference = asset_loading.load_t5(tiny_assets, "cpu", torch.bfloat16)
    tokens = torch.randint(0, 100, (2, 256))
    assert isinstance(encoders.t5, FusedT5Encoder)
    with torch.inference_mode():
        assert torch.equal(encoders.t5(tokens), reference(tokens))


# --------------------------------------------------------------------------- compact text


def _padded_captions(lengths: list[int], max_length: int) -> torch.Tensor:
    """Right-padded ids as the T5 tokenizer makes them: words, EOS (1), then pad (0)."""
    torch.manual_seed(1)
    tokens = torch.zeros(len(lengths), max_length, dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens[row, : n - 1] = torch.randint(3, 500, (n - 1,))
        tokens[row, n - 1] = 1
    return tokens


def test_compact_t5_equals_hf_with_its_attention_mask_and_t5_on_the_real_tokens_alone():
    """Compact text: rows [:L] are HF's ``T5EncoderModel(ids, attention_mask=…)`` (bit for bit on CPU, as the
    exact mode's), and T5 run on the L real tokens alone within fp32 rounding (the padding no longer
    touches a real token); rows from L on are zero."""
    hf = _tiny_t5(torch.float32)
    lengths = [1, 5, 17, 40]
    tokens = _padded_captions(lengths, 40)
    assert real_lengths(tokens).tolist() == lengths
    with torch.inference_mode():
        got = CompactT5(FusedT5Encoder(hf))(tokens)
        masked = hf(input_ids=tokens, attention_mask=(tokens != 0).long()).last_hidden_state
        alone = [hf(input_ids=tokens[row : row + 1, :n]).last_hidden_state[0] for row, n in enumerate(lengths)]
    for row, n in enumerate(lengths):
        assert torch.equal(got[row, :n], masked[row, :n])
        torch.testing.assert_close(got[row, :n], alone[row], rtol=0, atol=1e-5)
        assert not got[row, n:].any()
    padded = hf(input_ids=tokens).last_hidden_state  # the exact mode's: padding changes the real rows
    assert not torch.allclose(got[1, :5], padded[1, :5], atol=1e-3)


def test_the_exact_mode_is_unchanged_beside_the_compact_one():
    """The same module without lengths is HF's unmasked call bit for bit (TorchTitan's math)."""
    hf = _tiny_t5(torch.float32)
    tokens = _padded_captions([3, 30], 32)
    fused = FusedT5Encoder(hf)
    with torch.inference_mode():
        CompactT5(fused)(tokens)
        assert torch.equal(fused(tokens), hf(input_ids=tokens).last_hidden_state)
