"""Downloads from the Hugging Face Hub: the real FLUX.1-schnell assets and CC12M's tars.

    python -m downloads fetch --out DIR                    the real files (needs HF_TOKEN, ~10 GB)
    python -m downloads cc12m --out DIR [--shards A-B] [--workers N] [--verify]
                                [--task-index I --num-tasks N]
                                                          CC12M's tars (needs HF_TOKEN, ~1 TB)

``fetch`` writes the assets layout Stage 1 loads (``stage1_encode.assets``); ``cc12m`` the tars Stage 1
reads (resumable: a rerun fetches only what is missing; ``slurm/download_cc12m.sbatch`` spreads it over
an array job). A tool of its own: neither stage imports it. Heavy libraries load only when used.
"""

from downloads.fetch import FetchError, fetch_assets

__all__ = ["FetchError", "fetch_assets"]
