"""random-fast data: world-size invariance, determinism, the distributions it promises.

Expected values come from the definitions (the reference's bag-size formula evaluated on
a grid, numpy's own normal sampler, the normalized 1/k^s law), never from the generator.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlrm_dist.arch import feature_names
from dlrm_dist.data.random_fast import (
    FastDataSpec,
    RandomFastData,
    _Zipf,
    draw_slice,
    local_bounds,
)
from dlrm_dist.data.reference_random import RawBatch, _bag_sizes
from tests.common import concat, per_table

C = FastDataSpec(dense_features=13, table_sizes=(100,) * 12 + (1000,) * 3)

SPECS = {
    "uniform-random-bags": FastDataSpec(dense_features=3, table_sizes=(100, 7, 3, 1)),
    "gaussian-fixed": FastDataSpec(
        dense_features=2, table_sizes=(50, 60), fixed=True, dist="gaussian", rmax=40, sigma=9
    ),
    "zipf-multi-hot": FastDataSpec(
        dense_features=1, table_sizes=(5000, 20, 1), dist="zipf", multi_hot_sizes=(3, 1, 2)
    ),
    "zipf-random-bags": FastDataSpec(dense_features=4, table_sizes=(300, 9), dist="zipf"),
}


def assert_same(a: RawBatch, b: RawBatch) -> None:
    for name in ("dense", "lengths", "values", "targets"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


def differ(a: RawBatch, b: RawBatch) -> bool:
    return not np.array_equal(a.dense, b.dense) and not (
        a.values.shape == b.values.shape and np.array_equal(a.values, b.values)
    )


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_slices_of_every_world_size_make_the_same_global_batches(name):
    spec = SPECS[name]
    # 44 samples in batches of 16: the last batch is partial (12), split 12 / 6+6 / 3x4
    epochs = {
        w: [RandomFastData(spec, 5, 0, 16, rank=r, world_size=w, data_size=44) for r in range(w)]
        for w in (1, 2, 4)
    }
    assert all(len(d) == 3 for ranks in epochs.values() for d in ranks)
    for b in range(3):
        whole = epochs[1][0].raw(b)
        assert whole.dense.shape[0] == (16 if b < 2 else 12)
        for w in (2, 4):
            slices = [d.raw(b) for d in epochs[w]]
            assert all(s.dense.shape[0] == whole.dense.shape[0] // w for s in slices)
            assert_same(concat(slices), whole)


def test_any_sample_range_is_the_same_samples():
    spec = SPECS["uniform-random-bags"]
    whole = draw_slice(spec, 1, 0, 7, 0, 37)
    parts = [draw_slice(spec, 1, 0, 7, a, b) for a, b in ((0, 1), (1, 10), (10, 36), (36, 37))]
    assert_same(concat(parts), whole)


def test_same_arguments_give_the_same_batches_in_any_order():
    a = RandomFastData(C, 42, 4, 32, rank=1, world_size=2)
    b = RandomFastData(C, 42, 4, 32, rank=1, world_size=2)
    for i in reversed(range(4)):
        assert_same(a.raw(i), b.raw(i))
    assert_same(a.raw(2), a.raw(2))


def test_seed_stream_and_batch_each_change_the_data():
    base = draw_slice(C, 1, 0, 0, 0, 64)
    assert differ(base, draw_slice(C, 2, 0, 0, 0, 64))
    assert differ(base, draw_slice(C, 1, 1, 0, 0, 64))
    assert differ(base, draw_slice(C, 1, 0, 1, 0, 64))
    train = RandomFastData(C, 1, 2, 64)
    evaluation = RandomFastData(C, 1, 2, 64, stream=1)
    assert differ(train.raw(0), evaluation.raw(0)) and differ(train.raw(0), train.raw(1))


def test_local_bounds_are_equal_contiguous_slices():
    assert [local_bounds(12, r, 3) for r in range(3)] == [(0, 4), (4, 8), (8, 12)]
    assert local_bounds(7, 0, 1) == (0, 7)
    with pytest.raises(ValueError, match="multiple of 4"):
        local_bounds(10, 0, 4)
    with pytest.raises(ValueError, match="rank 2"):
        local_bounds(10, 2, 2)


def test_a_batch_the_ranks_cannot_split_fails_at_construction_or_when_drawn():
    with pytest.raises(ValueError, match="multiple of 4"):
        RandomFastData(C, 1, 0, 18, rank=0, world_size=4, data_size=42)  # full batch: 18
    d = RandomFastData(C, 1, 0, 16, rank=0, world_size=4, data_size=42)  # last batch: 10
    assert d.raw(1).targets.shape == (4, 1)  # the full batches are fine
    with pytest.raises(ValueError, match="multiple of 4"):
        d.raw(2)


def test_num_batches_wins_over_data_size_and_data_size_gives_a_partial_last_batch():
    d = RandomFastData(C, 1, 3, 8, data_size=100)
    assert len(d) == 3 and [d.batch_size(i) for i in range(3)] == [8, 8, 8]
    d = RandomFastData(C, 1, 0, 8, data_size=20)
    assert len(d) == 3 and [d.batch_size(i) for i in range(3)] == [8, 8, 4]
    assert d.raw(2).targets.shape == (4, 1)


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="poisson"):
        draw_slice(FastDataSpec(1, (10,), dist="poisson"), 0, 0, 0, 0, 1)
    with pytest.raises(ValueError, match="one positive size per table"):
        draw_slice(FastDataSpec(1, (10, 10), multi_hot_sizes=(2,)), 0, 0, 0, 0, 1)
    with pytest.raises(ValueError, match="non-empty"):
        draw_slice(C, 0, 0, 0, 5, 5)


def test_a_spec_from_config_lists_is_the_same_spec():
    listed = FastDataSpec(1, [10, 20], multi_hot_sizes=[2, 3])  # type: ignore[arg-type]
    assert listed == FastDataSpec(1, (10, 20), multi_hot_sizes=(2, 3)) and hash(listed)


def test_dtypes_shapes_and_unit_interval_floats():
    raw = draw_slice(C, 3, 0, 0, 0, 2000)
    assert raw.dense.dtype == np.float32 and raw.dense.shape == (2000, 13)
    assert raw.targets.dtype == np.float32 and raw.targets.shape == (2000, 1)
    assert raw.lengths.dtype == np.int64 and raw.lengths.shape == (15, 2000)
    assert raw.values.dtype == np.int64 and raw.values.shape == (raw.lengths.sum(),)
    for x in (raw.dense, raw.targets):
        assert x.min() >= 0.0 and x.max() < 1.0
        assert abs(x.mean() - 0.5) < 0.02 and abs(x.var() - 1 / 12) < 0.005
    # the 13 dense features of a sample are not copies of each other
    assert abs(np.corrcoef(raw.dense[:, 0], raw.dense[:, 1])[0, 1]) < 0.1


def test_rounded_targets_are_the_unrounded_ones_rounded():
    spec = FastDataSpec(dense_features=2, table_sizes=(10,))
    plain = draw_slice(spec, 9, 0, 3, 0, 500)
    rounded = draw_slice(FastDataSpec(2, (10,), round_targets=True), 9, 0, 3, 0, 500)
    assert set(np.unique(rounded.targets)) == {0.0, 1.0}
    assert np.array_equal(rounded.targets, np.round(plain.targets))
    assert np.array_equal(rounded.dense, plain.dense)


def test_iteration_gives_torchrec_batches_of_this_ranks_slice():
    data = RandomFastData(C, 4, 3, 64, rank=1, world_size=2)
    batches = list(data)
    assert len(batches) == 3
    for i, batch in enumerate(batches):
        raw = data.raw(i)
        kjt = batch.sparse_features
        assert kjt.keys() == feature_names(15)
        assert torch.equal(kjt.lengths(), torch.from_numpy(raw.lengths.reshape(-1)))
        assert torch.equal(kjt.values(), torch.from_numpy(raw.values))
        assert batch.dense_features.shape == (32, 13) and batch.labels.shape == (32,)
        assert torch.equal(batch.labels, torch.from_numpy(raw.targets.reshape(-1)))


def test_fixed_and_multi_hot_bags_have_exactly_their_size():
    fixed = draw_slice(
        FastDataSpec(2, (3, 100), num_indices_per_lookup=5, fixed=True), 0, 0, 0, 0, 50
    )
    assert (fixed.lengths == 5).all()
    hot = draw_slice(FastDataSpec(2, (3, 100, 7), multi_hot_sizes=(4, 1, 9)), 0, 0, 0, 0, 50)
    assert (hot.lengths == np.array([[4], [1], [9]])).all()


def test_random_bag_sizes_follow_the_reference_formula():
    spec = FastDataSpec(dense_features=1, table_sizes=(100, 7, 3, 1), num_indices_per_lookup=10)
    n = 20000
    raw = draw_slice(spec, 11, 0, 0, 0, n)
    grid = (np.arange(200_000) + 0.5) / 200_000  # u ~ U[0, 1) as a fine grid
    for lengths, cap in zip(raw.lengths, (10, 7, 3, 1)):
        assert lengths.min() >= 1 and lengths.max() <= cap
        want = np.bincount(_bag_sizes(grid, cap), minlength=cap + 1)[1:] / grid.size
        got = np.bincount(lengths, minlength=cap + 1)[1:] / n
        tol = 4 * np.sqrt(want * (1 - want) / n) + 1e-9
        assert (np.abs(got - want) <= tol).all(), (cap, got, want)


def test_uniform_indices_use_the_reference_rounding():
    spec = FastDataSpec(1, (1000, 7), multi_hot_sizes=(8, 8))
    big, small = per_table(draw_slice(spec, 2, 0, 0, 0, 10000))
    assert big.min() >= 0 and big.max() <= 999
    assert abs(big.mean() - 999 / 2) < 4 * 288.7 / np.sqrt(big.size)
    # rint(u * 6): the end rows get half the mass of the inner ones
    want = np.array([0.5, 1, 1, 1, 1, 1, 0.5]) / 6
    got = np.bincount(small, minlength=7) / small.size
    assert np.allclose(got, want, atol=4 * np.sqrt(want.max() / small.size))


@pytest.mark.parametrize("mu", [-1.0, 12.0])
def test_gaussian_indices_are_a_clipped_truncated_normal(mu):
    spec = FastDataSpec(
        1, (64, 50), dist="gaussian", rmin=3, rmax=30, mu=mu, sigma=8, multi_hot_sizes=(5, 5)
    )
    got = draw_slice(spec, 6, 0, 0, 0, 20000).values
    centre = 16.5 if mu == -1 else mu
    ref = np.clip(np.random.default_rng(0).normal(centre, 8, 400_000), 3, 30).astype(np.int64)
    assert got.min() == 3 and got.max() == 30
    assert abs(got.mean() - ref.mean()) < 0.1 and abs(got.std() - ref.std()) < 0.1
    for edge in (3, 30):  # the clipped mass piles up on the ends
        assert abs((got == edge).mean() - (ref == edge).mean()) < 0.006


def zipf_law(rows: int, s: float) -> np.ndarray:
    p = np.arange(1, rows + 1, dtype=np.float64) ** -s
    return p / p.sum()


@pytest.mark.parametrize("s", [0.8, 1.0, 1.05, 1.4])
def test_zipf_row_frequencies_follow_the_power_law(s):
    rows = (5000, 40)  # 5000 > 1024: the continuous tail is in play
    spec = FastDataSpec(1, rows, dist="zipf", zipf_exponent=s, multi_hot_sizes=(8, 4))
    for got, n in zip(per_table(draw_slice(spec, 8, 0, 0, 0, 25000)), rows):
        assert got.min() >= 0 and got.max() < n
        freq = np.sort(np.bincount(got, minlength=n))[::-1] / got.size
        law = zipf_law(n, s)
        top = slice(0, 8)
        tol = 4 * np.sqrt(law[top] / got.size) + 1e-3
        assert (np.abs(freq[top] - law[top]) <= tol).all(), (n, freq[top], law[top])
        for k in (10, 100, 1024, 2000):  # mass of the k most popular rows
            if k < n:
                assert abs(freq[:k].sum() - law[:k].sum()) < 0.012, (n, k)


@pytest.mark.parametrize("s", [0.8, 1.0, 1.4])
def test_zipf_inverse_cdf_on_a_uniform_grid_is_the_law(s):
    """Sampling noise and sorting hide small errors above; a fine grid of u through the
    inverse CDF gives the rank masses themselves (exact head, midpoint-rule tail)."""
    grid = (np.arange(2_000_000) + 0.5) / 2_000_000
    for rows in (5000, 1_000_000):
        zipf = _Zipf(FastDataSpec(1, (rows,), dist="zipf", zipf_exponent=s), seed=0)
        ranks = zipf.ranks(grid, np.zeros(grid.size, dtype=np.int64))
        assert ranks.min() >= 0 and ranks.max() < rows
        got = np.bincount(ranks, minlength=rows) / grid.size
        law = zipf_law(rows, s)
        assert np.abs(got[:2000] - law[:2000]).max() < 2e-6
        for k in (1024, 1025, 3000, rows // 2):
            assert abs(got[:k].sum() - law[:k].sum()) < 2e-6, (rows, k)


def test_zipf_hot_rows_are_spread_fixed_per_seed_and_shared_by_train_and_eval():
    spec = FastDataSpec(1, (10_000,), dist="zipf", multi_hot_sizes=(10,))

    def hottest(seed: int, stream: int) -> np.ndarray:
        values = draw_slice(spec, seed, stream, 0, 0, 20000).values
        return np.argsort(np.bincount(values, minlength=10_000))[::-1][:5]

    train = hottest(1, 0)
    assert np.array_equal(train, hottest(1, 1))
    assert not np.array_equal(train, hottest(2, 0))
    assert np.ptp(train) > 2000  # not packed at the start of the table


@pytest.mark.parametrize("rows", [1, 2, 97, 1024, 4096, 10_000])
def test_zipf_rank_to_row_map_is_a_bijection(rows):
    zipf = _Zipf(FastDataSpec(1, (rows, 3), dist="zipf"), seed=3)
    ranks = np.arange(rows)
    mapped = zipf.rows_of(ranks, np.zeros(rows, dtype=np.int64))
    assert np.array_equal(np.sort(mapped), ranks)
