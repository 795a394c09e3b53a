"""Assets for Stage 1: the real FLUX.1-schnell files, or tiny stand-ins and sample data for tests.

    python -m shared.assets tiny --out DIR [--seed S]          tiny random models + real tokenizers
    python -m shared.assets sample-data --out DIR --shards N --per-shard M [--seed S]
    python -m shared.assets fetch --out DIR                    the real files (needs HF_TOKEN, ~10 GB)

``tiny`` and ``fetch`` write the layout ``shared.encoders`` loads; ``sample-data`` writes tars in the
format Stage 1 (and TorchTitan's ``cc12m-test`` loader) reads. Heavy libraries load only when used.
"""

from shared.assets.fetch import FetchError, fetch_assets
from shared.assets.sample_data import write_sample_tars
from shared.assets.tiny import write_tiny_assets

__all__ = ["FetchError", "fetch_assets", "write_sample_tars", "write_tiny_assets"]
