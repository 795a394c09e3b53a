"""The GPU half of Stage 1: T5, CLIP and the AE encoder in micro-batches of fixed sizes.

A sample's numbers depend on the micro-batch it shares, and the pipeline makes those from consecutive
samples of one tar, so a rerun writes the same bytes. When compiled, every full micro-batch runs one
static graph; a tar's last, short micro-batch is zero-padded to full size when at least half full, and
otherwise runs eagerly: no recompilation, and a tail of a few samples does not cost a full micro-batch.

Nothing here waits for the GPU: host inputs go through page-locked staging buffers with asynchronous
copies, and outputs stay on the device (the store writer copies them out), so the CPU prepares the
next batch while the GPU encodes this one.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from shared import contract
from shared.ae import autoencoder_params, load_autoencoder
from shared.tokens import real_lengths
from stage1_encode import asset_loading
from stage1_encode.config import BatchConfig
from stage1_encode.t5_fused import CompactT5, FusedT5Encoder


@dataclass
class Encoders:
    """The frozen encoders on one device: from an assets directory (``load_encoders``) or injected
    (the benchmark builds real-size random-weight models in memory)."""

    t5: nn.Module | None
    """int tokens [B, L] -> ``last_hidden_state`` [B, L, D] (no attention mask, as TorchTitan; HF's weights in
    ``FusedT5Encoder``, which ``BatchEncoder`` masks for compact text); ``None`` when the text comes from
    another dataset (``--text-from``)."""
    clip: nn.Module | None
    """int tokens [B, 77] -> ``pooler_output`` [B, D]; ``None`` with ``t5``."""
    ae_encoder: nn.Module
    """images [B, 3, S, S] in [-1, 1] -> posterior moments [B, 2 z, S/f, S/f]."""
    ae_params: dict[str, Any]
    hashes: dict[str, dict[str, str]]
    """Per encoder and tokenizer: file -> SHA-256 (the dataset identity's ``encoders``)."""
    device: torch.device
    dtype: torch.dtype


def load_encoders(assets: str | os.PathLike, device: torch.device, dtype: torch.dtype) -> Encoders:
    """The encoders of an assets directory, loaded as TorchTitan loads them (``stage1_encode.asset_loading``); T5
    runs as ``FusedT5Encoder`` (same weights and math, fewer and faster kernels)."""
    ae = load_autoencoder(assets, device, dtype)
    return Encoders(
        t5=FusedT5Encoder(asset_loading.load_t5(assets, device, dtype).hf_module),
        clip=asset_loading.load_clip(assets, device, dtype),
        ae_encoder=ae.encoder,
        ae_params=dataclasses.asdict(autoencoder_params(assets)),
        hashes=asset_loading.asset_hashes(assets),
        device=device,
        dtype=dtype,
    )


class BatchEncoder:
    """Encodes batches of samples, each encoder in its own micro-batches (``BatchConfig``)."""

    def __init__(
        self, encoders: Encoders, batch: BatchConfig, compile: bool, channels_last: bool, compact_text: bool = False
    ) -> None:
        self.encoders = encoders
        self.batch = batch
        self.compact_text = compact_text
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        ae_encoder = encoders.ae_encoder.to(memory_format=self._memory_format)
        t5 = CompactT5(encoders.t5) if compact_text and encoders.t5 is not None else encoders.t5
        eager = {"t5": t5, "clip": encoders.clip, "ae": ae_encoder}
        self._modules = {
            name: _Module(m, torch.compile(m, dynamic=False) if compile else None) for name, m in eager.items() if m is not None
        }
        self._staging = _HostStaging(batch.size) if encoders.device.type == "cuda" else None

    @torch.inference_mode()
    def encode_text(self, t5_tokens: np.ndarray | torch.Tensor, clip_tokens: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """``t5`` [n, L, D] and ``clip`` [n, D] for n <= batch.size captions' tokens; compact text adds
        ``t5_length`` [n] int32, counted where the ids are (on the host for host ids: no GPU sync)."""
        t5 = self._micro("t5", self._to_device("t5_tokens", t5_tokens), self.batch.t5)
        clip = self._micro("clip", self._to_device("clip_tokens", clip_tokens), self.batch.clip)
        lengths = {contract.T5_LENGTH: real_lengths(torch.as_tensor(t5_tokens))} if self.compact_text else {}
        return {contract.T5: t5, contract.CLIP: clip, **lengths}

    @torch.inference_mode()
    def encode_images(self, pixels: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """``ae_mean`` and ``ae_logvar`` for n <= batch.size uint8 images [n, 3, S, S].

        Scaled to [-1, 1] as TorchTitan does (fp32 ``/ 255 * 2 - 1``, then the compute dtype), eagerly so
        no fused kernel changes the rounding. The moments are TorchTitan's ``DiagonalGaussian`` split of
        the encoder output, before its sampling and before scale/shift (Stage 2 samples them).
        """
        images = self._to_device("pixels", pixels).float() / 255.0 * 2.0 - 1.0
        images = images.to(self.encoders.dtype).contiguous(memory_format=self._memory_format)
        moments = self._micro("ae", images, self.batch.ae)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return {contract.AE_MEAN: mean, contract.AE_LOGVAR: logvar}

    def _to_device(self, name: str, values: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Host arrays are copied to the device (staged, asynchronously, on CUDA); tensors already there
        (the benchmark's ceiling) are used as is."""
        if len(values) > self.batch.size:
            raise ValueError(f"{len(values)} samples exceed batch.size {self.batch.size}")
        if isinstance(values, torch.Tensor) or self._staging is None:
            return torch.as_tensor(values, device=self.encoders.device)
        return self._staging.upload(name, np.asarray(values), self.encoders.device)

    def _micro(self, name: str, inputs: torch.Tensor, size: int) -> torch.Tensor:
        module = self._modules[name]
        outputs = []
        for start in range(0, len(inputs), size):
            part = inputs[start : start + size]
            n = len(part)
            if module.compiled is None or 2 * n < size:
                outputs.append(module.eager(part))
            elif n < size:
                outputs.append(module.compiled(torch.cat([part, part.new_zeros((size - n, *part.shape[1:]))]))[:n])
            else:
                outputs.append(module.compiled(part))
        return torch.cat(outputs)


@dataclass(frozen=True)
class _Module:
    eager: nn.Module
    compiled: nn.Module | None


class _HostStaging:
    """Page-locked host buffers for the encoders' inputs, two per input: one is filled while the other's
    copy to the device may still be running. An asynchronous copy needs page-locked memory; from
    ordinary memory a large copy blocks the CPU until the GPU has finished everything queued before it."""

    def __init__(self, batch_size: int) -> None:
        self._batch_size = batch_size
        self._buffers: dict[str, list[tuple[torch.Tensor, torch.cuda.Event]]] = {}
        self._turn: dict[str, int] = {}

    def upload(self, name: str, values: np.ndarray, device: torch.device) -> torch.Tensor:
        buffers = self._buffers.setdefault(name, [])
        turn = self._turn.get(name, 0)
        self._turn[name] = turn ^ 1
        dtype = torch.from_numpy(values[:0]).dtype
        if len(buffers) <= turn or buffers[turn][0].shape[1:] != values.shape[1:] or buffers[turn][0].dtype != dtype:
            buffer = torch.empty((self._batch_size, *values.shape[1:]), dtype=dtype, pin_memory=True)
            buffers[turn:turn + 1] = [(buffer, torch.cuda.Event())]
        buffer, copied = buffers[turn]
        copied.synchronize()  # this buffer's previous copy (two batches ago) is long done
        host = buffer[: len(values)]
        np.copyto(host.numpy(), values)
        on_device = host.to(device, non_blocking=True)
        copied.record()
        return on_device
