"""Stage 1 settings: one frozen dataclass per TOML section, loaded from a file plus ``--section.key value``
overrides and validated before any work starts.

The dataclass defaults are the production settings (``configs/encode_cc12m.toml`` spells them out and a
test keeps the two equal), so a config file only needs the keys it changes.

Why not TorchTitan's ``ConfigManager`` (tyro), which Stage 2 uses: Stage 1 is not a TorchTitan job, and
that manager parses TorchTitan's ``JobConfig`` tree, whose sections (job, model, training, …) Stage 1 has
no use for. The loader below is small, takes the same ``--section.key value`` overrides, and names the
section, key and expected type in every error.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from shared import contract


class ConfigError(ValueError):
    """A config file or override is unknown, mistyped or out of range."""


@dataclass(frozen=True)
class ImageConfig:
    size: int = 256
    """Output side in pixels; also the minimum accepted side (TorchTitan rejects smaller images)."""
    jpeg_draft: bool = False
    """Let libjpeg decode at a reduced scale (>= size): faster, changes pixels; recorded in the identity."""
    max_pixels: int = 89_478_485
    """Pillow's decompression-bomb guard: larger images are skipped as ``too_large`` before decoding."""

    def validate(self) -> None:
        _require(self.size > 0 and self.size % 16 == 0, "image.size must be a positive multiple of 16")
        _require(self.max_pixels >= self.size * self.size, "image.max_pixels must be at least image.size squared")


TEXT_MODES = ("exact", contract.COMPACT_TEXT)


@dataclass(frozen=True)
class TextConfig:
    t5_max_length: int = 256
    """T5 tokens per caption (padded/truncated as TorchTitan's FluxTokenizer; 256 for schnell)."""
    mode: str = "exact"
    """``exact``: T5 over all padded tokens, no mask (TorchTitan's math); ``compact``: T5 masked to each
    caption's real tokens, the padding rows stored as zeros (``shared.contract``, compact text)."""

    def validate(self) -> None:
        _require(self.t5_max_length > 0, "text.t5_max_length must be positive")
        _choice("text.mode", self.mode, TEXT_MODES)

    @property
    def compact(self) -> bool:
        return self.mode == contract.COMPACT_TEXT


@dataclass(frozen=True)
class EncodersConfig:
    device: str = "auto"
    """``auto`` (CUDA when visible, else CPU), ``cuda`` or ``cpu``."""
    dtype: str = "auto"
    """Compute dtype: ``auto`` (bfloat16 on GPU, float32 on CPU), ``bfloat16`` or ``float32``."""
    compile: str = "auto"
    """``torch.compile`` the encoders: ``auto`` (on GPU only), ``on`` or ``off``."""
    ae_channels_last: bool = True
    """channels_last AE input on GPU (faster compiled); ignored on CPU."""

    def validate(self) -> None:
        _choice("encoders.device", self.device, ("auto", "cuda", "cpu"))
        _choice("encoders.dtype", self.dtype, ("auto", "bfloat16", "float32"))
        _choice("encoders.compile", self.compile, ("auto", "on", "off"))


@dataclass(frozen=True)
class BatchConfig:
    size: int = 256
    """Samples per encode step: consecutive valid samples of one tar, so a batch's composition depends only
    on the tar's content (bit-identical reruns)."""
    t5: int = 128
    clip: int = 256
    ae: int = 64
    """Micro-batch per encoder (sizes for one H100 in bf16); each must divide ``size``. When compiled, a
    short last micro-batch is zero-padded so shapes never change."""

    def validate(self) -> None:
        for name in ("size", "t5", "clip", "ae"):
            _require(getattr(self, name) > 0, f"batch.{name} must be positive")
        for name in ("t5", "clip", "ae"):
            _require(self.size % getattr(self, name) == 0, f"batch.{name} must divide batch.size ({self.size})")


@dataclass(frozen=True)
class StorageConfig:
    dtype: str = "bfloat16"
    """Stored tensor dtype: ``bfloat16`` (production) or ``float32`` (exact tests)."""
    samples_per_shard: int = 64
    """Samples per Zarr shard file (one file per array per this many samples)."""

    def validate(self) -> None:
        _choice("storage.dtype", self.dtype, contract.STORAGE_DTYPES)
        _require(self.samples_per_shard > 0, "storage.samples_per_shard must be positive")


AUTO_DECODE_MAX = 6
"""Six decode processes keep well ahead of one H100's encoders (``bench/results/stage1_encode_h100.jsonl``);
more would only take CPU from the store writers."""


@dataclass(frozen=True)
class WorkersConfig:
    decode: int = -1
    """CPU processes decoding and tokenizing: -1 = auto, one per CPU of the task (Slurm's cpus-per-task,
    else this process's affinity) minus one, at most ``AUTO_DECODE_MAX``; 0 = in-process."""
    chunk: int = 32
    """Samples per worker job (amortises inter-process overhead)."""
    prefetch_chunks: int = 64
    """Worker jobs in flight: bounds memory while reading ahead, into the next tar."""
    stores_in_flight: int = 3
    """Tars encoded at once, batches taking turns, each written by its own process: one store's writer
    cannot keep up with the GPU, three can (``bench/results/stage1_writer_h100.jsonl``)."""

    def validate(self) -> None:
        _require(self.decode >= -1, "workers.decode must be -1 (auto), 0 (in-process) or a count")
        for name in ("chunk", "prefetch_chunks", "stores_in_flight"):
            _require(getattr(self, name) > 0, f"workers.{name} must be positive")

    def resolved_decode(self) -> int:
        if self.decode >= 0:
            return self.decode
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or 0) or len(os.sched_getaffinity(0))
        return max(1, min(cpus - 1, AUTO_DECODE_MAX))


@dataclass(frozen=True)
class RunConfig:
    progress_interval_s: float = 10.0
    """Seconds between progress lines and heartbeats."""
    stale_temporary_s: float = 3600.0
    """A temporary store untouched this long is treated as abandoned, whichever host wrote it."""

    def validate(self) -> None:
        _require(self.progress_interval_s > 0, "run.progress_interval_s must be positive")
        _require(self.stale_temporary_s > 0, "run.stale_temporary_s must be positive")


@dataclass(frozen=True)
class EncodeConfig:
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    run: RunConfig = field(default_factory=RunConfig)


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[tuple[str, str]] = ()) -> EncodeConfig:
    """Defaults, then the TOML file, then ``(section.key, text)`` overrides; every section validated."""
    values: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        for section, table in data.items():
            _section_class(section)
            if not isinstance(table, dict):
                raise ConfigError(f"[{section}] must be a table")
            for key, value in table.items():
                values.setdefault(section, {})[key] = _check_type(section, key, _field_type(section, key), value)
    for dotted, text in overrides:
        section, _, key = dotted.partition(".")
        values.setdefault(section, {})[key] = _parse(section, key, _field_type(section, key), text)
    sections = {}
    for f in dataclasses.fields(EncodeConfig):
        section = _section_types()[f.name](**values.get(f.name, {}))
        section.validate()
        sections[f.name] = section
    return EncodeConfig(**sections)


def parse_overrides(tokens: list[str]) -> list[tuple[str, str]]:
    """``--section.key value`` or ``--section.key=value`` pairs; anything else is an error."""
    pairs, i = [], 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or "." not in token.split("=", 1)[0]:
            raise ConfigError(f"unrecognized argument {token!r}")
        if "=" in token:
            name, value = token[2:].split("=", 1)
            i += 1
        elif i + 1 < len(tokens):
            name, value = token[2:], tokens[i + 1]
            i += 2
        else:
            raise ConfigError(f"{token} needs a value")
        pairs.append((name, value))
    return pairs


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(EncodeConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(EncodeConfig)}


def _section_class(section: str) -> type:
    types_ = _section_types()
    if section not in types_:
        raise ConfigError(f"unknown config section [{section}] (known: {', '.join(types_)})")
    return types_[section]


def _field_type(section: str, key: str) -> type:
    hints = typing.get_type_hints(_section_class(section))
    if key not in hints:
        raise ConfigError(f"unknown config key {section}.{key} (known: {', '.join(hints)})")
    return hints[key]


def _check_type(section: str, key: str, kind: type, value: Any) -> Any:
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        raise ConfigError(f"{section}.{key} must be {kind.__name__}, got {value!r}")
    return value


def _parse(section: str, key: str, kind: type, text: str) -> Any:
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{section}.{key} must be true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{section}.{key} must be {kind.__name__}, got {text!r}") from None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}")
