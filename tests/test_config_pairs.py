"""Each 512 px config is its 256 px config with only the keys its header names changed, so a key added
to one of a pair and not the other (as [comm], converters and the [stage2] keys once were) fails here."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from test_stage2_helpers import REPO_ROOT, parse_job_config

PAIRS = {
    ("flux_schnell.toml", "flux_schnell_512.toml"): {
        "training.img_size", "job.dump_folder", "job.description",
        "training.local_batch_size", "lr_scheduler.warmup_steps", "training.steps",
    },
    ("flux_tiny.toml", "flux_tiny_512.toml"): {"training.img_size", "job.dump_folder"},
}  # fmt: skip
"""(256 px config, 512 px config) -> the dotted keys their headers say differ."""
MISSING = object()


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: one entry per leaf key."""
    leaves: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            leaves |= flatten(value, f"{prefix}{key}.")
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def differing_keys(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    """Keys present in only one of ``a`` and ``b``, or with different values."""
    return {key for key in a.keys() | b.keys() if a.get(key, MISSING) != b.get(key, MISSING)}


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair[1])
def test_512_config_differs_from_its_256_config_only_where_its_header_says(pair):
    base, at_512 = (flatten(tomllib.loads((REPO_ROOT / "configs" / name).read_text())) for name in pair)
    assert base["training.img_size"] == 256 and at_512["training.img_size"] == 512
    assert differing_keys(base, at_512) == PAIRS[pair]
    assert parse_job_config(config_file=REPO_ROOT / "configs" / pair[1]).training.img_size == 512  # TorchTitan's parser takes it


def test_differing_keys_sees_a_key_on_one_side_only():
    assert differing_keys({"comm.x": 1, "a": 1}, {"a": 1}) == {"comm.x"}
    assert differing_keys({"a": None}, {}) == {"a"}
