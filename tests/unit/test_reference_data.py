"""The vectorized generator reproduces the reference's random data bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlrm_dist.arch import feature_names
from dlrm_dist.data.reference_random import (
    RandomDataSpec,
    ReferenceRandomData,
    draw_batch,
    to_batch,
)
from tests.oracle import seed_style_batch

SEED_EXAMPLE = [  # the seed document: seed 1, dense 4, tables (4, 3, 2), batch 2
    {
        "lengths": [[2, 3], [1, 1], [2, 1]],
        "indices": [[1, 2, 0, 1, 3], [1, 0], [0, 1, 1]],
        "dense0": [4.1702e-01, 7.2032e-01, 1.1437e-04, 3.0233e-01],
        "targets": [0.8946, 0.0850],
    },
    {
        "lengths": [[1, 3], [2, 1], [1, 1]],
        "indices": [[2, 0, 2, 3], [1, 2, 1], [0, 0]],
        "dense0": [0.0391, 0.1698, 0.8781, 0.0983],
        "targets": [0.6788, 0.2116],
    },
    {
        "lengths": [[2, 1], [2, 2], [1, 1]],
        "indices": [[1, 2, 2], [1, 2, 0, 2], [1, 0]],
        "dense0": [0.2655, 0.4916, 0.0534, 0.5741],
        "targets": [0.9275, 0.3478],
    },
]


def test_seed_document_worked_example():
    rs = np.random.RandomState(999)  # batch 0 reseeds, whatever came before
    rs.random_sample(17)
    data = ReferenceRandomData(RandomDataSpec(4, (4, 3, 2)), rs, 1, 6, 0, 2)
    assert len(data) == 3
    for j, want in enumerate(SEED_EXAMPLE):
        raw = data.raw(j)
        assert raw.lengths.tolist() == want["lengths"]
        assert [ix.tolist() for ix in raw.indices()] == want["indices"]
        assert [o.tolist() for o in raw.offsets()] == [[0, ln[0]] for ln in want["lengths"]]
        np.testing.assert_allclose(raw.dense[0], want["dense0"], rtol=5e-4, atol=5e-5)
        np.testing.assert_allclose(raw.targets[:, 0], want["targets"], atol=5e-5)


def _compare(spec: RandomDataSpec, n: int, seed: int = 5, batches: int = 3) -> None:
    ours, ref = np.random.RandomState(seed), np.random.RandomState(seed)
    for _ in range(batches):
        got = draw_batch(ours, spec, n)
        x, offsets, indices, t = seed_style_batch(
            ref,
            spec.dense_features,
            spec.table_sizes,
            n,
            spec.num_indices_per_lookup,
            spec.fixed,
            dist=spec.dist,
            rmin=spec.rmin,
            rmax=spec.rmax,
            mu=spec.mu,
            sigma=spec.sigma,
            round_targets=spec.round_targets,
        )
        np.testing.assert_array_equal(got.dense, x.numpy())
        for a, b in zip(got.offsets(), offsets):
            np.testing.assert_array_equal(a, b.numpy())
        for a, b in zip(got.indices(), indices):
            np.testing.assert_array_equal(a, b.numpy())
        np.testing.assert_array_equal(got.targets, t.numpy())
        # the stream is left exactly where the reference leaves it
        assert ours.random_sample() == ref.random_sample()


@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("nipl", [1, 3, 10, 40])
def test_uniform_matches_seed_loop(fixed, nipl):
    _compare(
        RandomDataSpec(5, (7, 1, 100, 2, 1000, 3), num_indices_per_lookup=nipl, fixed=fixed), 33
    )


@pytest.mark.parametrize("fixed", [False, True])
def test_gaussian_matches_seed_loop(fixed):
    spec = RandomDataSpec(
        3,
        (50, 60, 70),
        num_indices_per_lookup=6,
        fixed=fixed,
        dist="gaussian",
        rmin=2.0,
        rmax=45.0,
        mu=20.0,
        sigma=8.0,
    )
    _compare(spec, 21)


def test_gaussian_default_mu_and_float_dedup_quirk():
    spec = RandomDataSpec(
        2, (10, 10), num_indices_per_lookup=8, dist="gaussian", rmax=9.0, sigma=3.0
    )
    _compare(spec, 40)
    raw = draw_batch(np.random.RandomState(3), spec, 40)
    # floats are deduplicated before the int cast: equal ints can share a bag
    bags = np.split(raw.values, np.cumsum(raw.lengths.reshape(-1))[:-1])
    assert any(len(np.unique(b)) < len(b) for b in bags)
    assert all((np.diff(b) >= 0).all() for b in bags)


def test_round_targets_and_partial_last_batch():
    spec = RandomDataSpec(4, (30, 40), round_targets=True)
    _compare(spec, 7)
    rs = np.random.RandomState(0)
    data = ReferenceRandomData(spec, rs, 11, data_size=23, num_batches=0, mini_batch_size=10)
    sizes = [data.raw(i).dense.shape[0] for i in range(len(data))]
    assert sizes == [10, 10, 3]
    assert set(np.unique(data.raw(0).targets)) <= {0.0, 1.0}
    # num_batches overrides data_size, as in the reference
    data = ReferenceRandomData(spec, rs, 11, data_size=23, num_batches=4, mini_batch_size=10)
    assert len(data) == 4 and data.batch_size(3) == 10


def test_each_epoch_repeats_and_shared_stream_interleaves():
    spec = RandomDataSpec(4, (30, 40))
    rs = np.random.RandomState(0)
    data = ReferenceRandomData(spec, rs, 7, data_size=30, num_batches=0, mini_batch_size=10)
    first = [data.raw(i).values for i in range(3)]
    again = [data.raw(i).values for i in range(3)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    # a draw between batches (the reference's global stream) shifts the next batch
    data.raw(0)
    rs.random_sample(1)
    shifted = data.raw(1).dense
    ref = np.random.RandomState(7)
    draw_batch(ref, spec, 10)
    ref.random_sample(1)
    np.testing.assert_array_equal(shifted, draw_batch(ref, spec, 10).dense)
    data.raw(0)
    assert not np.array_equal(shifted, data.raw(1).dense)


def test_to_batch_builds_a_kjt_per_table():
    spec = RandomDataSpec(4, (4, 3, 2))
    raw = draw_batch(np.random.RandomState(1), spec, 2)
    batch = to_batch(raw, feature_names(3))
    kjt = batch.sparse_features
    assert kjt.keys() == ["cat_0", "cat_1", "cat_2"]
    assert kjt["cat_0"].values().tolist() == [1, 2, 0, 1, 3]
    assert kjt["cat_2"].lengths().tolist() == [2, 1]
    assert batch.dense_features.shape == (2, 4) and batch.labels.shape == (2,)
    # the per-key sums come with it (the seed's lengths: 2+3, 1+1, 2+1), as the KJT's own
    assert kjt.length_per_key() == [5, 2, 3] and kjt.offset_per_key() == [0, 5, 7, 10]
    assert kjt.stride() == 2 and kjt.lengths().tolist() == [2, 3, 1, 1, 2, 1]
    assert kjt.offsets().tolist() == [0, 2, 5, 6, 7, 9, 10]
    assert kjt.lengths().dtype == kjt.offsets().dtype == torch.int64


@pytest.mark.parametrize("fixed", [False, True])
def test_uniform_ids_lie_in_their_tables_by_construction(fixed):
    """What lets the trainer skip its per-batch check for this source (in_range): ids in
    [0, rows) for tables down to one row, over many batches; every row of a small table
    is reached, the last one included (round(u * (rows - 1)) of u in [0, 1))."""
    sizes = (1, 2, 3, 7, 1000)
    spec = RandomDataSpec(6, sizes, num_indices_per_lookup=4, fixed=fixed)
    data = ReferenceRandomData(spec, np.random.RandomState(0), 3, 0, 200, 32)
    assert data.in_range
    seen = [set() for _ in sizes]
    for index in range(len(data)):
        raw = data.raw(index)
        assert np.isfinite(raw.dense).all()
        ends = np.cumsum(raw.lengths.sum(axis=1))
        for t, ids in enumerate(np.split(raw.values, ends[:-1])):
            assert ids.min() >= 0 and ids.max() < sizes[t]
            seen[t].update(ids.tolist())
    assert [len(s) for s in seen[:4]] == [1, 2, 3, 7]
    gaussian = RandomDataSpec(6, sizes, dist="gaussian")
    assert not ReferenceRandomData(gaussian, np.random.RandomState(0), 3, 0, 2, 32).in_range
