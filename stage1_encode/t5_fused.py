"""T5-XXL's encoder with fewer, larger matmuls: the same weights and the same math as HF's ``T5EncoderModel``.

Stage 1 spends most of its GPU time in T5. HF's encoder runs q, k and v as three matmuls and the gated
feed-forward's two input projections as two; here each group is one matmul over the concatenated
weights, and attention is one ``scaled_dot_product_attention`` call with T5's relative position bias as
its additive mask (no scaling, as T5). On CUDA that call is held to the fused kernels that take a mask
(cuDNN, memory-efficient): left to choose, ``torch.compile`` lowers it to the math fallback, which runs
both attention matmuls in float32 without tensor cores — 27 % of HF's T5 time on an H200
(``bench/results/stage1_t5_h200.txt``). Layer norms, the activation, the bias buckets and the residual
order are HF's own modules and code, so only the summation order inside the fused matmuls and attention
kernel can differ: on CPU the outputs equal HF's bit for bit (``tests/test_t5_fused.py``); on an H200 both
are as far from a float32 run (RMS error 0.0169 of an RMS of 1.0, ``bench/results/stage1_t5_h200.txt``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from shared.tokens import real_lengths

FUSED_ATTENTION = [SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


class FusedT5Encoder(nn.Module):
    """int tokens [B, L] -> ``last_hidden_state`` [B, L, d_model] of a HF ``T5EncoderModel`` (no attention mask,
    as TorchTitan calls it). Takes the model's parameters over; the HF module should be dropped afterwards."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        config = hf_model.config
        if not config.is_gated_act:
            raise ValueError("FusedT5Encoder expects T5 v1.1's gated feed-forward (FLUX's T5-XXL)")
        stack = hf_model.encoder
        self.heads, self.head_dim = config.num_heads, config.d_kv
        self.embed_tokens = stack.embed_tokens
        self.position_bias = stack.block[0].layer[0].SelfAttention  # owns relative_attention_bias and compute_bias
        self.layers = nn.ModuleList(_FusedBlock(block, self.heads, self.head_dim) for block in stack.block)
        self.final_layer_norm = stack.final_layer_norm

    @property
    def dim(self) -> int:
        return self.embed_tokens.embedding_dim

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``lengths`` [B] (compact text): each row's keys from its length on are masked as HF's
        ``attention_mask`` masks them (``finfo.min`` added to the bias), and its output rows from there
        are zero. Without, the exact mode: every position attends to all (TorchTitan's call)."""
        hidden = self.embed_tokens(tokens)
        length = tokens.shape[1]
        bias = self.position_bias.compute_bias(length, length, device=hidden.device).to(hidden.dtype).contiguous()
        real = None
        if lengths is not None:
            real = torch.arange(length, device=hidden.device) < lengths[:, None]
            bias = bias + (~real).to(hidden.dtype)[:, None, None, :] * torch.finfo(hidden.dtype).min
        for layer in self.layers:
            hidden = layer(hidden, bias)
        hidden = self.final_layer_norm(hidden)
        return hidden if real is None else hidden.masked_fill(~real[..., None], 0)


class CompactT5(nn.Module):
    """Compact text: a ``FusedT5Encoder`` over each caption's real tokens only (``shared.tokens.real_lengths``
    of the padded ids, so one fixed-shape input compiles once), padding rows zero."""

    def __init__(self, t5: FusedT5Encoder) -> None:
        super().__init__()
        self.t5 = t5

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.t5(tokens, real_lengths(tokens))


class _FusedBlock(nn.Module):
    def __init__(self, block: nn.Module, heads: int, head_dim: int) -> None:
        super().__init__()
        attention, ff = block.layer[0], block.layer[1]
        self.heads, self.head_dim = heads, head_dim
        self.attention_norm = attention.layer_norm
        self.qkv = _fused_linear(attention.SelfAttention.q, attention.SelfAttention.k, attention.SelfAttention.v)
        self.out = attention.SelfAttention.o
        self.ff_norm = ff.layer_norm
        dense = ff.DenseReluDense
        self.wi = _fused_linear(dense.wi_0, dense.wi_1)
        self.act = dense.act
        self.wo = dense.wo

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden.shape
        qkv = self.qkv(self.attention_norm(hidden)).view(batch, length, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        with sdpa_kernel(FUSED_ATTENTION) if q.is_cuda else contextlib.nullcontext():
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        hidden = hidden + self.out(attended.transpose(1, 2).reshape(batch, length, -1))
        gate, linear = self.wi(self.ff_norm(hidden)).chunk(2, dim=-1)
        return hidden + self.wo(self.act(gate) * linear)


def _fused_linear(*linears: nn.Linear) -> nn.Linear:
    """One bias-free linear whose output is the given ones' outputs side by side."""
    weight = torch.cat([linear.weight for linear in linears])
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    return fused
