"""Torch tensors to and from the numpy arrays a store holds: zarr has no bfloat16, so bf16 tensors are
stored as the ``uint16`` view of their bits (``Identity.storage_dtype``) and viewed back without a copy."""

from __future__ import annotations

import numpy as np
import torch


def to_storage(tensor: torch.Tensor, storage_dtype: str) -> np.ndarray:
    """torch tensor -> numpy array as stored (bf16 as its uint16 bit pattern; integers, as compact text's
    ``t5_length``, as they are)."""
    t = tensor.detach().to("cpu")
    if not t.is_floating_point():
        return t.numpy()
    if storage_dtype == "bfloat16":
        return t.to(torch.bfloat16).contiguous().view(torch.uint16).numpy()
    return t.to(torch.float32).contiguous().numpy()


def from_storage(values: np.ndarray, storage_dtype: str) -> torch.Tensor:
    """Stored numpy array -> torch tensor of the logical dtype (zero-copy for bf16)."""
    t = torch.from_numpy(np.ascontiguousarray(values))
    if storage_dtype == "bfloat16":
        return t.view(torch.bfloat16)
    return t
