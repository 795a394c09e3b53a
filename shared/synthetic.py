"""Synthetic datasets in the Stage 1 format, for benchmarks and tests that need data but not encoders.

Values are random (seeded) but every byte goes through the same writer, identity and commit as
Stage 1's, so readers cannot tell the difference except by the ``code_version`` "synthetic".

    python -m shared.synthetic --out DIR --preset flux-schnell --stores 4 --samples-per-store 256
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from shared import contract, torch_storage
from shared.contract import Identity
from shared.store import StoreWriter


def schnell_identity(storage_dtype: str = "bfloat16") -> Identity:
    """Real FLUX.1-schnell shapes: T5-XXL [256, 4096], CLIP-L [768], AE 16 x 32 x 32 at 256 px."""
    from torchtitan.models.flux.model.autoencoder import AutoEncoderParams

    return Identity(
        t5_max_length=256,
        t5_dim=4096,
        clip_dim=768,
        image_size=256,
        ae_params=dataclasses.asdict(AutoEncoderParams()),
        storage_dtype=storage_dtype,
        encoders={},
        preprocessing={},
        code_version="synthetic",
    )


def write_synthetic_dataset(
    out: str | Path,
    identity: Identity,
    stores: int,
    samples_per_store: int,
    samples_per_shard: int = 64,
    seed: int = 0,
) -> Path:
    """Write ``stores`` committed stores of random tensors (plus the empty prompt) under ``out``."""
    out = Path(out)
    contract.write_identity(out, identity)
    contract.shards_dir(out).mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    specs = contract.array_specs(identity)
    write_empty_prompt(out, identity, gen)
    for index in range(stores):
        source = f"synthetic-{index:04d}.tar"
        path = contract.shards_dir(out) / contract.store_name(source)
        if path.exists():
            continue
        writer = StoreWriter(path, identity, specs, source, samples_per_shard)
        for start in range(0, samples_per_store, samples_per_shard):
            n = min(samples_per_shard, samples_per_store - start)
            writer.append(random_batch(identity, specs, n, f"{index:04d}", start, gen))
        writer.commit(skipped={})
    return out


def write_empty_prompt(out: Path, identity: Identity, gen: torch.Generator) -> None:
    path = out / contract.EMPTY_PROMPT_STORE
    if path.exists():
        return
    specs = contract.empty_prompt_specs(identity)
    writer = StoreWriter(path, identity, specs, "empty prompt", samples_per_shard=1)
    writer.append({name: _tensor(identity, spec, 1, gen) for name, spec in specs.items()})
    writer.commit(skipped={})


def _tensor(identity: Identity, spec: contract.ArraySpec, n: int, gen: torch.Generator) -> np.ndarray:
    return torch_storage.to_storage(torch.randn((n, *spec.shape), generator=gen), identity.storage_dtype)


def random_batch(
    identity: Identity, specs: dict[str, contract.ArraySpec], n: int, prefix: str, start: int, gen: torch.Generator
) -> dict[str, np.ndarray]:
    """``n`` samples of every array in ``specs``, keyed ``<prefix><start + i>``."""
    batch = {name: _tensor(identity, spec, n, gen) for name, spec in specs.items() if spec.is_tensor}
    # Log-variances of a trained AE are strongly negative; keep the synthetic ones plausible.
    batch[contract.AE_LOGVAR] = torch_storage.to_storage(
        torch_storage.from_storage(batch[contract.AE_LOGVAR], identity.storage_dtype).float() - 6.0, identity.storage_dtype
    )
    keys = [f"{prefix}{start + i:06d}" for i in range(n)]
    batch[contract.KEY] = np.array(keys)
    batch[contract.CAPTION] = np.array([f"synthetic caption {k}" for k in keys])
    batch[contract.ORIGINAL_SIZE] = np.full((n, 2), identity.image_size, dtype="int32")
    batch[contract.CROP_BOX] = np.tile(np.array([0, 0, identity.image_size, identity.image_size], dtype="int32"), (n, 1))
    return batch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", choices=["flux-schnell"], default="flux-schnell")
    parser.add_argument("--storage-dtype", choices=contract.STORAGE_DTYPES, default="bfloat16")
    parser.add_argument("--stores", type=int, default=2)
    parser.add_argument("--samples-per-store", type=int, default=256)
    parser.add_argument("--samples-per-shard", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = write_synthetic_dataset(
        args.out, schnell_identity(args.storage_dtype), args.stores, args.samples_per_store, args.samples_per_shard, args.seed
    )
    print(f"wrote {args.stores} stores x {args.samples_per_store} samples to {out}")


if __name__ == "__main__":
    main()
