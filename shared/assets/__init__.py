"""Assets for Stage 1: the real FLUX.1-schnell files, or tiny stand-ins and sample data for tests.

    python -m shared.assets tiny --out DIR [--seed S]          tiny random models + real tokenizers
    python -m shared.assets sample-data --out DIR --shards N --per-shard M [--seed S]
    python -m shared.assets fetch --out DIR                    the real files (needs HF_TOKEN, ~10 GB)
    python -m shared.assets cc12m --out DIR [--shards A-B] [--workers N] [--verify]
                                  [--task-index I --num-tasks N]
                                                               CC12M's tars (needs HF_TOKEN, ~1 TB)

``tiny`` and ``fetch`` write the layout ``shared.asset_loading`` loads; ``sample-data`` writes tars in the
format Stage 1 (and TorchTitan's ``cc12m-test`` loader) reads, ``cc12m`` the real ones (resumable: a
rerun fetches only what is missing; ``slurm/download_cc12m.sbatch`` spreads it over an array job).
Heavy libraries load only when used.
"""

from shared.assets.fetch import FetchError, fetch_assets
from shared.assets.sample_data import write_sample_tars
from shared.assets.tiny import write_tiny_assets

__all__ = ["FetchError", "fetch_assets", "write_sample_tars", "write_tiny_assets"]
