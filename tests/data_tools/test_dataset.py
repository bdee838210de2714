"""Packed samples, deterministic shuffling, data-parallel split, resume, blending."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from data_tools.dataset import BlendedDataset, PackedDataset, SampleOrder
from data_tools.errors import DataError
from data_tools.indexed_dataset import IndexedDataset, write_dataset


@pytest.fixture
def shards(tmp_path):
    """Two shards whose concatenated stream is 0, 1, 2, ..., 99 (documents of uneven length)."""
    stream = np.arange(100)
    write_dataset(tmp_path / "a", [stream[0:7], stream[7:30], stream[30:41]], np.uint16)
    write_dataset(tmp_path / "b", [stream[41:42], stream[42:100]], np.uint16)
    return [IndexedDataset(tmp_path / "a"), IndexedDataset(tmp_path / "b")]


def test_packed_samples_cross_document_and_shard_boundaries(shards):
    ds = PackedDataset(shards, seq_len=8)
    assert len(ds) == (100 - 1) // 8
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i], np.arange(i * 8, i * 8 + 9))  # seq_len + 1, stride seq_len
    assert ds[5].dtype == np.int64  # spans the shard boundary at 41
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_too_little_data_is_a_clear_error(shards):
    with pytest.raises(DataError, match="fewer than one sample of seq_len"):
        PackedDataset(shards, seq_len=200)


def test_order_is_deterministic_and_differs_by_seed_and_epoch():
    a, b, c = SampleOrder(50, seed=1), SampleOrder(50, seed=1), SampleOrder(50, seed=2)
    first = [a.at(p) for p in range(100)]
    assert first == [b.at(p) for p in range(100)]
    assert first != [c.at(p) for p in range(100)]
    assert sorted(first[:50]) == list(range(50)) and sorted(first[50:]) == list(range(50))
    assert first[:50] != first[50:]
    assert [SampleOrder(5, seed=0, shuffle=False).at(p) for p in range(7)] == [0, 1, 2, 3, 4, 0, 1]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_ranks_are_disjoint_and_cover_every_sample_each_epoch(world_size):
    n, micro = 48, 2
    order = SampleOrder(n, seed=7)
    steps = n // (micro * world_size)  # one epoch
    per_rank = []
    for rank in range(world_size):
        batches = order.rank_batches(rank, world_size, micro)
        per_rank.append(np.concatenate([next(batches) for _ in range(steps)]))
    seen = np.concatenate(per_rank)
    assert len(seen) == n and sorted(seen) == list(range(n))
    for r1, r2 in itertools.combinations(range(world_size), 2):
        assert not set(per_rank[r1]) & set(per_rank[r2])


def test_resume_at_any_consumed_count_continues_the_same_stream():
    order = SampleOrder(30, seed=3)
    world, micro = 2, 3
    full = {r: order.rank_batches(r, world, micro) for r in range(world)}
    reference = {r: [next(full[r]).tolist() for _ in range(12)] for r in range(world)}
    for steps_done in (0, 1, 4, 7):
        consumed = steps_done * micro * world
        for r in range(world):
            resumed = SampleOrder(30, seed=3).rank_batches(r, world, micro, consumed_samples=consumed)
            assert [next(resumed).tolist() for _ in range(12 - steps_done)] == reference[r][steps_done:]


def test_blend_proportions_exact_and_deterministic(shards):
    big, small = PackedDataset(shards, 4), PackedDataset(shards[:1], 4)
    blend = BlendedDataset([big, small], [0.7, 0.3], size=1000)
    counts = np.bincount(blend.dataset_index, minlength=2)
    assert counts.tolist() == [700, 300]
    for prefix in (10, 97, 500):  # every prefix is within one sample of its share
        share = np.bincount(blend.dataset_index[:prefix], minlength=2)
        assert abs(share[0] - 0.7 * prefix) <= 1
    # The small dataset is cycled in order.
    small_idx = blend.sample_index[blend.dataset_index == 1]
    assert small_idx[: 2 * len(small)].tolist() == list(range(len(small))) * 2
    np.testing.assert_array_equal(blend[1], big[0] if blend.dataset_index[1] == 0 else small[0])
    again = BlendedDataset([big, small], [7, 3], size=1000)
    np.testing.assert_array_equal(again.dataset_index, blend.dataset_index)
    with pytest.raises(ValueError, match="positive"):
        BlendedDataset([big], [0.0], 10)
