"""Every kind of tests/bad_inputs.py's catalogue through ``python -m stage1_encode`` (decode worker on, as
in production): each bad kind is skipped under its own reason and counted, each valid control is kept
and encoded, and nothing crashes. Stores count skips per reason, so each sample kind's own reason is
checked through the reader and decode step the command's workers run. "Nothing outside ``--output``"
means, exactly: no new file under the test's temporary root (inputs, a decoy folder, the output's
parent) but the dataset and the run's log, and no escape target beside the dataset, its shards, the
working directory or the tars; the rest of the filesystem is not watched."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import zarr

from bad_inputs import BOMB_SIDE, OK, write_catalogue
from shared import contract
from stage1_encode.asset_loading import load_tokenizers
from stage1_encode.config import load_config
from stage1_encode.identity import image_policy
from stage1_encode.prepare import init_worker, prepare_chunk
from stage1_encode.skips import Skip, SkipReason
from stage1_encode.tars import read_tar
from test_stage1_pipeline import TINY_CONFIG, run_cli, verified_stores

pytest_plugins = ["fixtures_assets"]


def _files(root: Path) -> set[Path]:
    return {Path(d) / f for d, _dirs, files in os.walk(root) for f in files} | {
        Path(d) / s for d, dirs, _files in os.walk(root) for s in dirs if (Path(d) / s).is_symlink()}


@pytest.fixture(scope="module")
def catalogue_run(tiny_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    outside = root / "outside"
    outside.mkdir()
    catalogue = write_catalogue(root / "tars", outside)
    before = _files(root)
    dataset = root / "ds"
    result = run_cli(root / "tars", dataset, tiny_assets, "--image.max_pixels", "1000000")
    return root, dataset, catalogue, before, result


def test_every_kind_is_kept_or_skipped_under_its_reason(catalogue_run, tally):
    root, dataset, catalogue, _before, result = catalogue_run
    for _ in range(catalogue.bad_kinds):
        tally.trial("bad-input kinds")
    for _ in range(catalogue.valid_controls):
        tally.trial("valid controls")
    # Two tars broke off (cut inside a member, zero bytes): done, with exit status 3 naming them.
    assert result.returncode == 3, result.stdout
    assert "2 damaged source(s)" in result.stdout, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    # Every reason but the ladder's (a key the text dataset lacks: tests/test_ladder.py) has a kind here.
    ladder_only = {SkipReason.NOT_IN_TEXT_DATASET}
    assert {k.expected for k in catalogue.samples + catalogue.tars} - {OK} == set(SkipReason) - ladder_only, "a reason has no kind"
    stores = verified_stores(dataset)
    assert sorted(stores) == sorted(["catalogue.zarr"] + [contract.store_name(k.file) for k in catalogue.tars])
    assert sum((Counter(s.skipped) for s in stores.values()), Counter()) == catalogue.skipped
    for kind in catalogue.tars:
        attrs = stores[contract.store_name(kind.file)]
        assert attrs.skipped == {kind.expected: 1} and attrs.num_samples == len(kind.keys), kind.name
        if kind.keys:
            kept = zarr.open_group(contract.shards_dir(dataset) / contract.store_name(kind.file), mode="r")
            assert list(kept["key"][:]) == list(kind.keys), kind.name

    group = zarr.open_group(contract.shards_dir(dataset) / "catalogue.zarr", mode="r")
    keys = list(group["key"][:])
    assert keys == catalogue.kept_keys
    row = {k: i for i, k in enumerate(keys)}
    captions = list(group["caption"][:])
    assert captions[row["bad_twice"]] == "a red fox in the snow"  # the first caption, not the repeat
    assert len(captions[row["ok_long_caption"]]) == 50_000 and captions[row["ok_odd_caption"]].startswith("\ufeff")
    assert list(group["original_size"][row["ok_exif"]]) == [300, 400]  # EXIF orientation 6 applied
    assert list(group["original_size"][row["ok_wide"]]) == [2600, 256]
    tally.passed("bad-input kinds", catalogue.bad_kinds)
    tally.passed("valid controls", catalogue.valid_controls)
    reasons = len({k.expected for k in catalogue.samples + catalogue.tars} - {OK})
    tally.notes.append(f"bad input: {catalogue.bad_kinds} bad kinds under {reasons} skip reasons, "
                       f"{catalogue.valid_controls} valid controls kept; the bomb declares {BOMB_SIDE}² pixels")


def test_each_sample_kind_is_skipped_under_its_own_reason(catalogue_run, tiny_assets):
    """Per key, not per total: a kind counted under another kind's reason would leave the store's
    counts unchanged. The catalogue tar through Stage 1's tar reader and its workers' decode and
    tokenize step (``prepare_chunk``, in this process), at the command's settings."""
    root, _dataset, catalogue, _before, _result = catalogue_run
    config = load_config(TINY_CONFIG, [("image.max_pixels", "1000000")])
    init_worker(lambda: load_tokenizers(tiny_assets, config.text.t5_max_length))
    read = list(read_tar(root / "tars" / "catalogue.tar"))
    raw = [item for item in read if not isinstance(item, Skip)]
    outcomes: dict[str, Counter] = {}
    for item in [*read, *prepare_chunk(raw, image_policy(config), config.text.t5_max_length)]:
        if item in raw:
            continue
        outcomes.setdefault(item.key, Counter())[str(item.reason) if isinstance(item, Skip) else OK] += 1
    expected: dict[str, Counter] = {}
    for kind in catalogue.samples:  # a kind may repeat another's key (a key seen again later in the tar)
        expected.setdefault(kind.key, Counter()).update([str(kind.expected)] + [OK] * kind.first_kept)
    assert outcomes == expected


def test_nothing_is_written_outside_the_output_directory(catalogue_run, repo_root):
    """Members named ``../../…``, ``/…`` and links reach no file outside ``--output`` (only the run's log
    beside it is new), neither relative to the dataset, its shards, the working directory nor the tars."""
    root, dataset, _catalogue, before, result = catalogue_run
    assert result.returncode == 3, result.stdout  # done; two tars broke off
    new = _files(root) - before
    assert all(p.is_relative_to(dataset) or (p.parent == root and p.suffix == ".log") for p in new), sorted(new)
    assert not any((root / "outside").iterdir())
    for base in (dataset, contract.shards_dir(dataset), repo_root, root / "tars"):
        assert not (base / "../../bad_escape.jpg").exists() and not (base / "../../bad_escape.txt").exists()
    assert not any(p.is_symlink() for p in dataset.rglob("*"))

