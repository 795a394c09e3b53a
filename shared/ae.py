"""The FLUX autoencoder from an assets directory's ``ae.safetensors``: what Stage 1 encodes with, and what
Stage 2 and inspect decode sample grids with (so it lives with the format, not in a stage).

Its architecture is inferred from the tensor shapes and every key checked before loading: TorchTitan's
``load_ae`` loads non-strictly, and a wrong file would leave randomly initialised layers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torchtitan.models.flux.model.autoencoder import AutoEncoder, AutoEncoderParams

AE_FILE = "ae.safetensors"
FLUX_SCALE_FACTOR, FLUX_SHIFT_FACTOR = 0.3611, 0.1159
"""FLUX.1's latent scale and shift: constants of the model, not stored in ``ae.safetensors``."""


class AssetsError(RuntimeError):
    """The assets directory is incomplete, unreadable, or holds files of the wrong architecture."""


def autoencoder_params(assets_dir: str | os.PathLike) -> "AutoEncoderParams":
    """Infer TorchTitan's ``AutoEncoderParams`` from the tensor shapes in ``ae.safetensors`` (header only).

    ``resolution`` shapes no weight; it is 256 as in every TorchTitan Flux flavor. Scale and shift are
    FLUX's constants. For the real file this equals TorchTitan's flux-schnell ``autoencoder_params``.
    """
    from torchtitan.models.flux.model.autoencoder import AutoEncoderParams

    path = Path(assets_dir) / AE_FILE
    if not path.is_file():
        raise AssetsError(f"{path} is missing")
    shapes = safetensors_shapes(path)

    def shape(key: str) -> list[int]:
        if key not in shapes:
            raise AssetsError(f"{path} has no tensor {key!r}: not a FLUX autoencoder")
        return shapes[key]

    ch, in_channels = shape("encoder.conv_in.weight")[:2]
    levels = _count_indices(shapes, r"encoder\.down\.(\d+)\.")
    num_res_blocks = _count_indices(shapes, r"encoder\.down\.0\.block\.(\d+)\.")
    if levels == 0 or num_res_blocks == 0:
        raise AssetsError(f"{path} has no encoder.down.<level>.block.<i> tensors: not a FLUX autoencoder")
    # A level's width is the output of its last resnet block; ch_mult is that width over ch.
    widths = [shape(f"encoder.down.{i}.block.{num_res_blocks - 1}.conv2.weight")[0] for i in range(levels)]
    if any(w % ch for w in widths):
        raise AssetsError(f"{path}: level widths {widths} are not multiples of ch={ch}")
    return AutoEncoderParams(
        resolution=256,
        in_channels=in_channels,
        ch=ch,
        out_ch=shape("decoder.conv_out.weight")[0],
        ch_mult=tuple(w // ch for w in widths),
        num_res_blocks=num_res_blocks,
        z_channels=shape("encoder.conv_out.weight")[0] // 2,
        scale_factor=FLUX_SCALE_FACTOR,
        shift_factor=FLUX_SHIFT_FACTOR,
    )


def load_autoencoder(
    assets_dir: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> "AutoEncoder":
    """TorchTitan's ``load_ae`` with the inferred params, after checking every key and shape matches.

    ``load_ae`` loads non-strictly and only prints missing/unexpected keys; a wrong file would leave
    randomly initialised layers, so the state dict is compared against the architecture first.
    """
    from torchtitan.models.flux.model.autoencoder import AutoEncoder, load_ae

    path = Path(assets_dir) / AE_FILE
    params = autoencoder_params(assets_dir)
    with torch.device("meta"):
        expected = {k: list(v.shape) for k, v in AutoEncoder(params).state_dict().items()}
    _require_same_keys(path, expected, safetensors_shapes(path))
    ae = load_ae(str(path), params, device=device, dtype=dtype)
    return ae.eval().requires_grad_(False)


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}


def _count_indices(shapes: dict[str, list[int]], pattern: str) -> int:
    found = [int(m.group(1)) for key in shapes if (m := re.match(pattern, key))]
    return max(found) + 1 if found else 0


def _require_same_keys(path: Path, expected: dict[str, list[int]], actual: dict[str, list[int]]) -> None:
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    wrong = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    if missing or unexpected or wrong:
        raise AssetsError(
            f"{path} does not match the inferred autoencoder: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}), wrong shape {wrong[:5]} ({len(wrong)})"
        )
