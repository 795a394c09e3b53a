"""Encode a prompt set: a text file of prompts -> their T5 and CLIP encodings, plus the empty prompt's, so
Stage 2 can draw sample images while it trains without loading the text encoders.

    python -m stage1_encode.prompts --prompts FILE --output DIR --assets ASSETS \\
        [--config configs/encode_cc12m.toml] [--section.key value …]

One prompt per line, stripped; blank lines are skipped. Tokenizers, encoders, config and identity are
Stage 1's own, so a prompt set made with a dataset's assets and config fits it (Stage 2 compares their
text encoders, ``shared.pairing.text_encoder_differences``). A prompt set is written once: rerunning with
the same prompts does nothing; other prompts need a new ``--output``. The layout is in ``shared.contract``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from shared import contract, torch_storage
from shared.contract import ContractError, Identity
from shared.store import StoreReader, StoreWriter
from stage1_encode import asset_loading
from stage1_encode.captions import tokenize
from stage1_encode.cleanup import remove_stale_temporaries
from stage1_encode.config import ConfigError, EncodeConfig, load_config, parse_overrides
from stage1_encode.dataset_setup import identity_and_empty_prompt, resolve_compute, write_empty_prompt
from stage1_encode.encode import BatchEncoder, load_encoders
from stage1_encode.errors import Stage1Error
from stage1_encode.identity import register_dataset


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a file: each non-blank line, stripped."""
    prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise Stage1Error(f"{path} holds no prompts (one per line)")
    return prompts


def stored_prompts(output: Path) -> list[str] | None:
    """The prompts of an existing prompt set at ``output`` (``None`` when it has none yet)."""
    path = output / contract.PROMPTS_STORE
    if not path.exists():
        return None
    identity = contract.read_identity(output)
    reader = StoreReader(path, identity, {contract.PROMPT: contract.prompt_specs(identity)[contract.PROMPT]})
    return [str(reader.read(i)[contract.PROMPT]) for i in range(len(reader))]


def encode_prompt_set(config: EncodeConfig, prompts_file: Path, output: Path, assets: Path) -> bool:
    """Write the prompt set of ``prompts_file`` at ``output``; False when it was already there."""
    prompts = read_prompts(prompts_file)
    existing = stored_prompts(output)
    if existing is not None and existing != prompts:
        raise Stage1Error(f"{output} already holds {len(existing)} other prompts; use a new --output")
    asset_loading.check_assets(assets)
    device, dtype, compile_ = resolve_compute(config)
    encoders = load_encoders(assets, device, dtype)
    encoder = BatchEncoder(encoders, config.batch, compile_, channels_last=False, compact_text=config.text.compact)
    tokenizers = asset_loading.load_tokenizers(assets, config.text.t5_max_length)
    identity, empty = identity_and_empty_prompt(config, encoders, encoder, tokenizers, dtype, compile_)
    register_dataset(output, assets, identity)  # refuses a set made otherwise
    if existing is not None:
        return False
    stores = {contract.EMPTY_PROMPT_STORE, contract.PROMPTS_STORE}
    remove_stale_temporaries(output, stores, config.run.stale_temporary_s)
    write_empty_prompt(output, identity, empty)
    _write_prompts(output, identity, prompts, encoder, tokenizers, config, source=prompts_file.name)
    return True


def _write_prompts(
    output: Path,
    identity: Identity,
    prompts: list[str],
    encoder: BatchEncoder,
    tokenizers: tuple[object, object],
    config: EncodeConfig,
    source: str,
) -> None:
    specs = contract.prompt_specs(identity)
    writer = StoreWriter(output / contract.PROMPTS_STORE, identity, specs, source, config.storage.samples_per_shard)
    try:
        for start in range(0, len(prompts), config.batch.size):
            chunk = prompts[start : start + config.batch.size]
            tensors = encoder.encode_text(*tokenize(tokenizers, chunk, config.text.t5_max_length))
            batch = {name: torch_storage.to_storage(t, identity.storage_dtype) for name, t in tensors.items()}
            writer.append({**batch, contract.PROMPT: np.array(chunk)})
        writer.commit(skipped={})
    except BaseException:
        writer.abort()
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stage1_encode.prompts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any config key can be overridden as --section.key value; --encoders.compile off saves compiling\n"
        "the encoders on a GPU for a handful of prompts.",
    )
    parser.add_argument("--prompts", required=True, type=Path, help="text file, one prompt per line")
    parser.add_argument("--output", required=True, type=Path, help="prompt set directory")
    parser.add_argument("--assets", required=True, type=Path, help="FLUX.1-schnell assets directory")
    parser.add_argument("--config", type=Path, help="TOML config (use the dataset's; default: production settings)")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config, parse_overrides(rest))
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        written = encode_prompt_set(config, args.prompts, args.output, args.assets)
    except (OSError, asset_loading.AssetsError, ContractError, Stage1Error) as exc:
        print(f"stage1_encode.prompts: error: {exc}", file=sys.stderr)
        return 1
    print(f"stage1_encode.prompts: {args.output} {'written' if written else 'already holds these prompts'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
