"""Decode latents with a dataset's own AE decoder and lay them out as one captioned grid image.

Public for whoever shows a dataset's or a model's latents: ``inspect_shards --grid`` and Stage 2's sample images.

The latent is z = scale·(mean − shift) of the stored posterior mean (deterministic: no noise), as Stage 2
builds it; TorchTitan's ``AutoEncoder.decode`` undoes scale and shift and runs the decoder. The weights
must be the ones the dataset was encoded with (architecture from the identity, SHA-256 where the
identity records it): a picture decoded by another AE would look plausible and be wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from shared import contract, torch_storage
from shared.contract import ContractError, Identity

if TYPE_CHECKING:
    from torchtitan.models.flux.model.autoencoder import AutoEncoder

GRID_COLUMNS = 4
PAD = 6
CAPTION_LINES = 3
DECODE_BATCH = 8


def load_dataset_ae(
    dataset: str | os.PathLike, identity: Identity, ae_dir: str | os.PathLike | None, device: str | torch.device
) -> tuple["AutoEncoder", Path, bool]:
    """The AE ``dataset`` was encoded with, checked (architecture; SHA-256 where the identity records it)
    and loaded on ``device`` (bf16 on GPU, fp32 on CPU). Returns (AE, weights file, whether hash-checked)."""
    from shared.ae import AE_FILE, load_autoencoder

    weights = ae_assets_dir(dataset, ae_dir) / AE_FILE
    checked = check_ae_weights(weights, identity)
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    ae = load_autoencoder(weights.parent, device, dtype)
    _require_architecture(ae, identity)
    return ae, weights, checked


def ae_assets_dir(dataset: str | os.PathLike, ae_dir: str | os.PathLike | None) -> Path:
    """``--ae`` (an assets dir, or its ``ae.safetensors``), else the assets dir Stage 1 recorded."""
    from shared.ae import AE_FILE

    if ae_dir is None:
        recorded = contract.read_dataset_json(dataset).get(contract.ASSETS_DIR_KEY)
        if recorded is None:
            raise ContractError(f"{contract.DATASET_FILE} records no assets directory; pass --ae PATH")
        ae_dir = recorded
    path = Path(ae_dir)
    assets = path.parent if path.is_file() else path
    if path.is_file() and path.name != AE_FILE or not (assets / AE_FILE).is_file():
        raise ContractError(f"no {AE_FILE} at {path}; pass --ae with an assets directory or its {AE_FILE}")
    return assets


def check_ae_weights(path: Path, identity: Identity) -> bool:
    """Refuse weights whose SHA-256 differs from the identity's; False when the identity records none."""
    recorded = identity.encoders.get("ae", {}).get(path.name)
    if recorded is None:
        return False
    with open(path, "rb") as f:
        actual = hashlib.file_digest(f, "sha256").hexdigest()
    if actual != recorded.removeprefix("sha256:"):
        raise ContractError(f"{path} (sha256 {actual[:12]}…) is not the AE this dataset was encoded with ({recorded[:12]}…)")
    return True


def decode(ae: torch.nn.Module, means: np.ndarray, identity: Identity) -> np.ndarray:
    """Stored posterior means [n, C, h, w] -> RGB images [n, H, W, 3] uint8."""
    mean = torch_storage.from_storage(means, identity.storage_dtype).float()
    return decode_latents(ae, identity.ae_scale_factor * (mean - identity.ae_shift_factor))


def decode_latents(ae: torch.nn.Module, z: torch.Tensor) -> np.ndarray:
    """Scaled latents z [n, C, h, w] (what the encoder's ``scale·(· − shift)`` yields, what Flux denoises)
    -> RGB images [n, H, W, 3] uint8, via ``AutoEncoder.decode``."""
    device, dtype = next(ae.parameters()).device, next(ae.parameters()).dtype
    images = []
    with torch.no_grad():
        for start in range(0, len(z), DECODE_BATCH):
            x = ae.decode(z[start : start + DECODE_BATCH].to(device, dtype)).float().clamp(-1, 1)
            images.append(((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(images)


def grid_size(n: int, image_size: int) -> tuple[int, int]:
    """(width, height) of the grid of ``n`` images with their caption bands."""
    columns, rows = min(n, GRID_COLUMNS), math.ceil(n / GRID_COLUMNS)
    cell_height = image_size + CAPTION_LINES * _line_height(_font())
    return columns * (image_size + PAD) + PAD, rows * (cell_height + PAD) + PAD


def grid_image(images: np.ndarray, captions: list[str]) -> Image.Image:
    """Images in rows of ``GRID_COLUMNS``, each with up to ``CAPTION_LINES`` of its caption beneath."""
    size = images.shape[1]
    font = _font()
    canvas = Image.new("RGB", grid_size(len(images), size), "white")
    draw = ImageDraw.Draw(canvas)
    cell_height = size + CAPTION_LINES * _line_height(font)
    for i, (pixels, caption) in enumerate(zip(images, captions)):
        x = PAD + (i % GRID_COLUMNS) * (size + PAD)
        y = PAD + (i // GRID_COLUMNS) * (cell_height + PAD)
        canvas.paste(Image.fromarray(pixels), (x, y))
        for j, line in enumerate(wrap(caption, font, size, CAPTION_LINES)):
            draw.text((x, y + size + j * _line_height(font)), line, fill="black", font=font)
    return canvas


def wrap(text: str, font: ImageFont.FreeTypeFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; text beyond ``max_lines`` is cut with an ellipsis."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [lines[max_lines - 1] + " …"]
    return [_fit(line, font, width) for line in lines]


def _fit(line: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    if font.getlength(line) <= width:
        return line
    while line and font.getlength(line + "…") > width:
        line = line[:-1]
    return line + "…"


def _require_architecture(ae: torch.nn.Module, identity: Identity) -> None:
    """The weights' architecture (inferred from their shapes) must be the identity's."""
    loaded = json.loads(json.dumps(dataclasses.asdict(ae.params)))
    diff = {k: (v, identity.ae_params.get(k)) for k, v in loaded.items() if identity.ae_params.get(k) != v}
    if diff:
        raise ContractError(f"AE weights differ from the dataset's AE (loaded, dataset): {diff}")


CAPTION_FONT_PX = 13
"""Pillow's default size (10 px) renders ':' and ';' as near-invisible specks; 13 px keeps them legible."""


def _font() -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=CAPTION_FONT_PX)


def _line_height(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent
