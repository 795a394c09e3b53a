"""Session fixture: tiny FLUX.1-schnell-layout assets (``python -m fixtures tiny``, seed 0).

Register with ``pytest_plugins = ["fixtures_assets"]``. Treat the directory as read-only; copy it to
change files. ``stage1_encode.asset_loading.asset_hashes`` may add its hidden hash cache there.
"""

from pathlib import Path

import pytest

from fixtures import write_tiny_assets

TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> Path:
    """Directory with ae.safetensors, text_encoder{,_2}/, tokenizer{,_2}/ (tiny random weights, seed 0)."""
    return write_tiny_assets(tmp_path_factory.mktemp("tiny-assets"), seed=TINY_SEED)
