"""Stage 2 reader: sample order per rank and epoch, exact values, resume, corruption, identity checks."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from test_stage2_helpers import PRODUCTION_CONFIG, parse_job_config, tiny_identity, write_tiny_dataset

from fixtures.synthetic import schnell_identity
from shared import contract
from shared.contract import ContractError
from shared.store import StoreReader
from stage2_train.data.dataset import PrecomputedDataset, collate, load_empty_prompt
from stage2_train.data.identity_check import identity_differences
from stage2_train.data.loader import build_precomputed_dataloader, open_dataset
from stage2_train.data.sampler import EpochBatchSampler, SamplePosition, epoch_order
from stage2_train.model.flavors import FLAVORS


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """2 stores x 12 samples, 4 samples per Zarr shard."""
    return write_tiny_dataset(tmp_path_factory.mktemp("stage2-data") / "ds")


def _take(sampler: EpochBatchSampler, n: int) -> list[list[int]]:
    return list(itertools.islice(iter(sampler), n))


# --------------------------------------------------------------------------- sampler


def test_ranks_are_disjoint_and_equal_and_drop_only_the_tail():
    n, batch, world = 103, 4, 3
    samplers = [EpochBatchSampler(n, batch, rank, world, seed=7) for rank in range(world)]
    per_epoch = n // (batch * world)
    assert all(s.batches_per_epoch == per_epoch == 8 for s in samplers)
    streams = [_take(s, 3 * per_epoch) for s in samplers]
    for epoch in range(3):
        rank_sets = [{i for b in stream[epoch * per_epoch : (epoch + 1) * per_epoch] for i in b} for stream in streams]
        assert all(len(r) == per_epoch * batch for r in rank_sets)
        union = set().union(*rank_sets)
        assert len(union) == per_epoch * batch * world  # disjoint
        assert union <= set(range(n)) and n - len(union) == n % (batch * world)


def test_order_is_a_function_of_seed_and_epoch_and_never_ends():
    a, b = EpochBatchSampler(50, 5, 1, 2, seed=3), EpochBatchSampler(50, 5, 1, 2, seed=3)
    three_epochs = _take(a, 3 * a.batches_per_epoch + 1)
    assert three_epochs == _take(b, len(three_epochs))
    epochs = [three_epochs[i * 5 : (i + 1) * 5] for i in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled every epoch
    assert _take(EpochBatchSampler(50, 5, 1, 2, seed=4), 5) != epochs[0]


def _global_stream(n: int, batch: int, world: int, position: SamplePosition, steps: int) -> list[list[int]]:
    """The global batches ``steps`` steps of ``world`` ranks x ``batch`` train from ``position``."""
    samplers = [EpochBatchSampler(n, batch, rank, world, seed=1) for rank in range(world)]
    for sampler in samplers:
        sampler.position = position
    per_rank = [_take(sampler, steps) for sampler in samplers]
    return [[i for rank in per_rank for i in rank[step]] for step in range(steps)]


def test_position_is_global_so_any_layout_resumes_it():
    """World 2 x batch 3 for 4 steps, then world 3 x batch 2 (same global batch) and world 1 x batch 3
    from the same position: every layout walks the same permutation on from there."""
    n = 40
    position = SamplePosition()
    for _ in range(4):
        position = position.after_batch(n, 6)
    assert position == SamplePosition(0, 24)
    walked = [i for b in _global_stream(n, 3, 2, SamplePosition(), 4) for i in b]
    rest_same_global = [i for b in _global_stream(n, 2, 3, position, 2) for i in b]
    rest_smaller = [i for b in _global_stream(n, 3, 1, position, 5) for i in b]
    order = epoch_order(n, 1, 0).tolist()
    assert walked == order[:24]
    assert rest_same_global == order[24:36]  # then 4 left over: the next batch starts epoch 1
    assert rest_smaller == order[24:39]
    assert SamplePosition(0, 36).next_batch_start(n, 6) == SamplePosition(1, 0)


def test_too_small_a_dataset_is_refused():
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        EpochBatchSampler(7, 4, 0, 2, seed=0)


# --------------------------------------------------------------------------- dataset


def test_dataset_returns_the_stored_values_across_stores(dataset):
    identity = tiny_identity()
    ds = PrecomputedDataset(dataset, identity, "fail")
    assert len(ds) == 24
    second_store = contract.committed_store_paths(dataset)[1]
    reader = StoreReader(second_store, identity, contract.array_specs(identity))
    stored = reader.read(5)
    sample = ds[12 + 5]
    assert sample["index"] == 17
    for name in ("t5", "clip", "ae_mean", "ae_logvar"):
        assert sample[name].dtype == torch.float32
        assert torch.equal(sample[name], torch.from_numpy(stored[name]))
    empty = load_empty_prompt(dataset, identity)
    assert empty["t5"].shape == (256, 32) and empty["clip"].shape == (32,)

    inputs, labels = collate([ds[0], None, ds[3]])
    assert labels.tolist() == [0, 3] and inputs["ae_mean"].shape == (2, 16, 32, 32)


def test_loader_resumes_at_exactly_the_next_batch_with_workers(dataset):
    config = parse_job_config(
        *("--training.dataset_path", str(dataset), "--training.local_batch_size", "2"),
        *("--training.dataloader.num_workers", "2", "--training.dataloader.prefetch_factor", "2"),
    )
    loaders = [build_precomputed_dataloader(2, rank, config) for rank in range(2)]
    for rank, loader in enumerate(loaders):
        stream = iter(loader)
        seen = [next(stream) for _ in range(7)]  # 6 batches per epoch: crosses into epoch 1
        state = loader.state_dict()
        expected = [next(stream) for _ in range(5)]

        resumed = build_precomputed_dataloader(2, rank, config)
        resumed.load_state_dict(state)
        got = list(itertools.islice(iter(resumed), 5))
        for (want_inputs, want_labels), (got_inputs, got_labels) in zip(expected, got):
            assert torch.equal(want_labels, got_labels)
            assert all(torch.equal(want_inputs[k], got_inputs[k]) for k in want_inputs)
        assert all(len(labels) == 2 for _, labels in seen)

    first_epoch = [
        {i for _, labels in itertools.islice(build_precomputed_dataloader(2, rank, config), 6) for i in labels.tolist()}
        for rank in range(2)
    ]
    assert not first_epoch[0] & first_epoch[1] and len(first_epoch[0] | first_epoch[1]) == 24


# --------------------------------------------------------------------------- corruption


def _flip_a_byte(path: Path) -> None:
    """Damage the first chunk of a Zarr shard file (its index sits at the end)."""
    data = bytearray(path.read_bytes())
    data[16] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def damaged(tmp_path) -> tuple[Path, Path]:
    """A dataset whose second store has a flipped byte in its first sample's t5 and its last ae_mean shard missing."""
    root = write_tiny_dataset(tmp_path / "ds")
    store = contract.committed_store_paths(root)[1]
    _flip_a_byte(store / "t5" / "c" / "0" / "0" / "0")
    (store / "ae_mean" / "c" / "2" / "0" / "0" / "0").unlink()
    return root, store


def test_corrupt_sample_stops_training_with_the_store_named(damaged):
    root, store = damaged
    ds = PrecomputedDataset(root, tiny_identity(), "fail")
    assert ds[11]["index"] == 11  # the first store is fine
    with pytest.raises(ContractError, match=store.name):
        ds[12]  # checksum failure
    with pytest.raises(ContractError, match=f"{store.name}.*missing"):
        ds[12 + 8]  # missing shard file

    config = parse_job_config("--training.dataset_path", str(root), "--training.dataloader.num_workers", "1")
    with pytest.raises(ContractError, match=store.name):
        for _ in build_precomputed_dataloader(1, 0, config):
            pass


def test_corrupt_samples_are_skipped_when_configured(damaged):
    root, _ = damaged
    ds = PrecomputedDataset(root, tiny_identity(), "skip")
    bad = [i for i in range(len(ds)) if ds[i] is None]
    assert bad == [12, 20, 21, 22, 23]
    inputs, labels = collate([ds[i] for i in range(10, 14)])
    assert labels.tolist() == [10, 11, 13] and inputs["t5"].shape[0] == 3
    with pytest.raises(ContractError, match="all 2 samples"):
        collate([ds[12], ds[20]])


# --------------------------------------------------------------------------- identity


def test_identity_mismatch_is_refused_with_every_difference(tmp_path):
    ae_params = {**tiny_identity().ae_params, "z_channels": 4, "scale_factor": 1.0}
    root = write_tiny_dataset(tmp_path / "ds", stores=1, t5_max_length=128, clip_dim=48, ae_params=ae_params)
    config = parse_job_config("--training.dataset_path", str(root))
    with pytest.raises(ContractError) as refused:
        open_dataset(config)
    message = str(refused.value)
    assert str(root) in message and "flux-tiny" in message
    for expected in (
        "t5_max_length = 128, but encoder.max_t5_encoding_len = 256",
        "clip_dim = 48, but flavor vec_in_dim = 32",
        "ae_params.z_channels * 4 = 16, but flavor in_channels = 64",
        "ae_params.scale_factor = 1.0, but flavor autoencoder_params.scale_factor = 0.3611",
    ):
        assert expected in message

    assert identity_differences(tiny_identity(), FLAVORS["flux-tiny"], config) == []
    schnell = parse_job_config("--model.flavor", "flux-schnell", "--training.img_size", "512")
    differences = identity_differences(tiny_identity(), FLAVORS["flux-schnell"], schnell)
    assert any("t5_dim = 32, but flavor context_in_dim = 4096" in d for d in differences)
    assert any("image_size = 256, but training.img_size = 512" in d for d in differences)
    assert any("ae_params.ch_mult = [1, 1, 1, 1]" in d for d in differences)
    assert all(d.startswith("dataset ") for d in differences)


def test_production_config_accepts_a_schnell_dataset():
    config = parse_job_config(config_file=PRODUCTION_CONFIG)
    assert (config.model.name, config.model.flavor, config.training.classifier_free_guidance_prob) == (
        "flux_precomputed",
        "flux-schnell",
        0.447,
    )
    assert identity_differences(schnell_identity(), FLAVORS["flux-schnell"], config) == []
