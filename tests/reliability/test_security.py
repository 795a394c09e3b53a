"""Security properties, and where they stop.

- A lint of our own code (not a proof: it sees direct calls in shared/, stage1_encode/, stage2_train/,
  scripts/ and bench/, not what libraries do inside): weights load only through safetensors,
  ``torch.load(weights_only=True)`` or numpy without pickle.
- Checkpoints are trusted input: TorchTitan resumes through ``torch.distributed.checkpoint``, which
  unpickles each checkpoint's ``.metadata`` — whoever can write the checkpoint folder can run code in
  the trainer. A test shows it, so the statement is re-checked with every torch upgrade.
- Pillow's decompression-bomb guard is always on.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from PIL import Image

from stage1_encode.config import ConfigError, load_config
from stage1_encode.decode import ImagePolicy, decode_image
from test_stage1_pipeline import TINY_CONFIG
from test_stage1_units import image_bytes

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("shared", "stage1_encode", "stage2_train", "scripts", "bench")


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_weights_load_only_through_safe_paths(tally):
    tally.trial("security checks")
    unsafe, seen = [], 0
    for top in PRODUCT:
        for path in sorted((REPO / top).rglob("*.py")):
            seen += 1
            tree = ast.parse(path.read_text(), str(path))
            for call, name in _calls(tree):
                where = f"{path.relative_to(REPO)}:{call.lineno} {name}"
                if name == "torch.load":
                    kw = {k.arg: k.value for k in call.keywords}
                    if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                        unsafe.append(where)
                if name in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load",
                            "numpy.load", "np.load"):
                    kw = {k.arg: k.value for k in call.keywords}
                    if name.endswith("np.load") or name.endswith("numpy.load"):
                        if isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False:
                            continue
                        if "allow_pickle" not in kw:
                            continue  # numpy's default is allow_pickle=False
                    unsafe.append(where)
                if name.endswith("from_pretrained") and "Tokenizer" not in name:  # models: safetensors only
                    kw = {k.arg: k.value for k in call.keywords}
                    value = kw.get("use_safetensors")
                    if not (isinstance(value, ast.Constant) and value.value is True):
                        unsafe.append(where)
    assert seen > 20 and unsafe == [], unsafe
    tally.passed("security checks")


class _Payload:
    """Pickles as "call ``Path.touch(marker)``": what a planted ``.metadata`` could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_checkpoint_is_trusted_input_its_metadata_is_unpickled(tmp_path, tally):
    tally.trial("security checks")
    state = {"weight": torch.zeros(4)}
    checkpoint = tmp_path / "checkpoint" / "step-10"
    dcp.save(state, checkpoint_id=checkpoint)  # the call TorchTitan's CheckpointManager makes
    marker = tmp_path / "code-ran"
    (checkpoint / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(dcp.api.CheckpointException):  # the payload is not metadata: the load fails, after running it
        dcp.load(state, checkpoint_id=checkpoint)
    assert marker.exists(), "torch.distributed.checkpoint no longer unpickles .metadata: update the docs"
    tally.passed("security checks")


def test_decompression_bomb_guard_is_on(tally):
    tally.trial("security checks")
    assert Image.MAX_IMAGE_PIXELS is not None
    policy = ImagePolicy(size=256, jpeg_draft=False, max_pixels=1_000_000)
    assert decode_image(image_bytes("L", (1500, 1500), "PNG"), "k", policy) == "too_large"
    assert Image.MAX_IMAGE_PIXELS == 1_000_000  # the guard is set to the policy, never None
    default = load_config(TINY_CONFIG).image.max_pixels
    assert 0 < default <= 89_478_485 * 2
    with pytest.raises(ConfigError):
        load_config(TINY_CONFIG, [("image.max_pixels", "0")])
    tally.passed("security checks")
