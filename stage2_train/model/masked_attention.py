"""Compact text: Flux's joint attention with each caption's padded T5 positions masked out as keys.

TorchTitan's ``FluxModel`` takes no attention mask. ``TextMaskedFluxModel`` is that model, its blocks and
forward unchanged, with each block's ``inner_attention`` (TorchTitan's ``ScaledDotProductAttentionWrapper``)
replaced by ``KeyPaddingAttention``, and a ``forward`` that also takes ``txt_mask`` [B, L_txt] (True: a
real T5 token). The blocks call their attention with q, k, v only, so the model hands the mask to every
``KeyPaddingAttention`` before running TorchTitan's forward, from eager code outside any compiled region:

* a compiled block (``torch.compile(fullgraph=True)``, AC inside or not) reads it as a graph input, the
  recompute of a compiled AC block included (it is part of the compiled backward);
* an eager AC block recomputes in backward and reads it then: the mask stays set until the next forward,
  so each forward must have its backward before the model's next forward — as every training micro-batch
  has (validation and sampling run no backward).

Masking follows TorchTitan's call: its blocks leave the wrapper's ``is_causal=True`` default, so the joint
[txt, img] attention is causal in 0.2.2 and stays so here, with text keys past each caption's length
masked out for every query. Parameters and state-dict keys are ``FluxModel``'s: checkpoints move between
modes (the exact mode's model is TorchTitan's ``FluxModel`` itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torchtitan.models.flux import FluxModel
from torchtitan.models.flux.model.args import FluxModelArgs

SDPA_BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
"""TorchTitan's order with flash attention, which takes no mask, replaced by memory-efficient attention."""


class KeyPaddingAttention(nn.Module):
    """SDPA over the joint [txt, img] sequence with text keys past each caption's length masked out;
    otherwise TorchTitan's ``ScaledDotProductAttentionWrapper`` (its signature and defaults)."""

    def __init__(self) -> None:
        super().__init__()
        self.txt_mask: Tensor | None = None
        """[B, L_txt] bool, set by ``TextMaskedFluxModel.forward``."""

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None, enable_gqa: bool = False, is_causal: bool = True
    ) -> Tensor:
        if self.txt_mask is None:
            raise RuntimeError("KeyPaddingAttention runs inside TextMaskedFluxModel.forward, which sets the text mask")
        keep = F.pad(self.txt_mask, (0, k.shape[2] - self.txt_mask.shape[1]), value=True)[:, None, None, :]
        if is_causal:  # SDPA takes no explicit mask with is_causal: the same triangle, as a mask
            keep = keep & torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        with sdpa_kernel(SDPA_BACKENDS, set_priority=True):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale, enable_gqa=enable_gqa)


class TextMaskedFluxModel(FluxModel):
    """``FluxModel`` whose forward also takes ``txt_mask`` [B, L_txt] (bool) and masks padded text keys."""

    def __init__(self, model_args: FluxModelArgs) -> None:
        super().__init__(model_args)
        for block in (*self.double_blocks, *self.single_blocks):
            block.inner_attention = KeyPaddingAttention()

    def forward(  # type: ignore[override]
        self, img: Tensor, img_ids: Tensor, txt: Tensor, txt_ids: Tensor, timesteps: Tensor, y: Tensor, txt_mask: Tensor
    ) -> Tensor:
        if txt_mask.shape != txt.shape[:2] or txt_mask.dtype != torch.bool:
            raise ValueError(f"txt_mask must be bool {tuple(txt.shape[:2])}, got {txt_mask.dtype} {tuple(txt_mask.shape)}")
        for module in self.modules():
            if isinstance(module, KeyPaddingAttention):
                module.txt_mask = txt_mask
        return super().forward(img, img_ids, txt, txt_ids, timesteps, y)


def build_flux_model(model_args: FluxModelArgs) -> FluxModel:
    """The TrainSpec's model: TorchTitan's ``FluxModel`` on an exact dataset, the masked one on a compact one."""
    return TextMaskedFluxModel(model_args) if getattr(model_args, "compact_text", False) else FluxModel(model_args)
