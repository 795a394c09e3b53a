"""Refuse a dataset whose tensors do not fit the model and settings this job trains with.

A stale or foreign cache trains without error and quietly teaches the wrong thing, so every field of
the dataset identity that shapes or scales a tensor is compared with what the flavor and job config
expect, and all disagreements are reported at once.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from torchtitan.config import JobConfig
from torchtitan.models.flux.model.args import FluxModelArgs

from shared.contract import ContractError, Identity
from stage2_train.model.flavors import LATENT_PATCH


def identity_differences(identity: Identity, flavor: FluxModelArgs, job_config: JobConfig) -> list[str]:
    """One line per disagreement between a dataset identity and this job (empty when they agree)."""
    ae_expected = json.loads(json.dumps(dataclasses.asdict(flavor.autoencoder_params)))
    t5_length = job_config.encoder.max_t5_encoding_len
    latent_token_width = identity.latent_channels * LATENT_PATCH**2  # one token: 2 x 2 latent pixels, all channels
    checks: list[tuple[str, Any, str, Any]] = [
        ("t5_max_length", identity.t5_max_length, "encoder.max_t5_encoding_len", t5_length),
        ("t5_dim", identity.t5_dim, "flavor context_in_dim", flavor.context_in_dim),
        ("clip_dim", identity.clip_dim, "flavor vec_in_dim", flavor.vec_in_dim),
        ("image_size", identity.image_size, "training.img_size", job_config.training.img_size),
        ("ae_params.z_channels * 4", latent_token_width, "flavor in_channels", flavor.in_channels),
    ]
    checks += [
        (f"ae_params.{key}", identity.ae_params.get(key), f"flavor autoencoder_params.{key}", value)
        for key, value in ae_expected.items()
    ]
    return [
        f"dataset {ours} = {have!r}, but {theirs} = {want!r}" for ours, have, theirs, want in checks if have != want
    ]


def check_identity(identity: Identity, flavor: FluxModelArgs, job_config: JobConfig, dataset: str) -> None:
    """Raise ``ContractError`` listing every difference, naming the dataset and the flavor."""
    differences = identity_differences(identity, flavor, job_config)
    if differences:
        lines = "\n  ".join(differences)
        raise ContractError(
            f"dataset {dataset} does not match model flavor {job_config.model.flavor!r} and this config:\n  {lines}"
        )
