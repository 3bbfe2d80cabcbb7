"""random-fast in torch ops: every field equal to the numpy generator's, on CPU and CUDA.

The expected values are `random_fast`'s numpy draws (an independent implementation of the
same definitions, tested against the laws in test_random_fast.py), never the torch code's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dlrm_dist.data.random_fast_torch as rft
from dlrm_dist.data.random_fast import FastDataSpec, RandomFastData, _Zipf, draw_slice
from dlrm_dist.data.random_fast_torch import TorchRandomFastData, TorchRawBatch, draw_slice_torch
from dlrm_dist.data.reference_random import RawBatch
from tests.common import concat

BIG = 40_000_000  # the MLPerf DCNv2 tables' rows

FIELDS = ("dense", "lengths", "values", "targets")


SPECS = {
    "uniform-random-bags": FastDataSpec(dense_features=3, table_sizes=(100, 7, 3, 1, BIG)),
    "uniform-fixed-rounded": FastDataSpec(
        dense_features=2,
        table_sizes=(100, 7, BIG),
        fixed=True,
        num_indices_per_lookup=4,
        round_targets=True,
    ),
    "uniform-multi-hot": FastDataSpec(
        dense_features=13, table_sizes=(2000, 5, BIG, 1), multi_hot_sizes=(3, 1, 5, 2)
    ),
    "gaussian-fixed": FastDataSpec(
        dense_features=2, table_sizes=(50, 60), fixed=True, dist="gaussian", rmax=40, sigma=9
    ),
    "gaussian-random-bags-rounded": FastDataSpec(
        dense_features=1,
        table_sizes=(70, 9),
        dist="gaussian",
        rmin=-5,
        rmax=60,
        mu=10,
        sigma=20,
        round_targets=True,
    ),
    "zipf-1.05-multi-hot": FastDataSpec(
        dense_features=1,
        table_sizes=(5000, 20, 1, 1024, BIG),
        dist="zipf",
        multi_hot_sizes=(3, 1, 2, 2, 4),
    ),
    "zipf-1.0-random-bags": FastDataSpec(
        dense_features=4, table_sizes=(300, 9, 2000, BIG), dist="zipf", zipf_exponent=1.0
    ),
    "zipf-1.0-small-tables-fixed": FastDataSpec(
        dense_features=1, table_sizes=(1000, 17), dist="zipf", zipf_exponent=1.0, fixed=True
    ),
}


def assert_equal(ours: TorchRawBatch, ref: RawBatch) -> None:
    """Every field of ours (moved to the host) equal to numpy's, dtype and shape included."""
    got = ours.numpy()
    for name in FIELDS:
        x, y = getattr(got, name), getattr(ref, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x, y), f"{name}: {int((x != y).sum())} of {x.size} differ"
    assert ours.per_table == tuple(ref.lengths.sum(axis=1).tolist())


def assert_same_batches(ours, ref) -> None:
    """Two sequences of TorchRec Batches equal field by field (ours may be on a device)."""
    ours, ref = list(ours), list(ref)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        ka, kb = a.sparse_features, b.sparse_features
        assert ka.keys() == kb.keys() and ka.stride() == kb.stride()
        assert ka.length_per_key() == kb.length_per_key()
        assert ka.offset_per_key() == kb.offset_per_key()
        pairs = [
            (a.dense_features, b.dense_features),
            (a.labels, b.labels),
            (ka.values(), kb.values()),
            (ka.lengths(), kb.lengths()),
        ]
        for x, y in pairs:
            assert x.dtype == y.dtype and torch.equal(x.cpu(), y)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_field_equals_numpy_for_any_batch_stream_and_sample_range(name):
    spec = SPECS[name]
    for stream, batch, (start, stop) in ((0, 0, (0, 300)), (1, 7, (0, 300)), (0, 3, (123, 250))):
        ref = draw_slice(spec, 11, stream, batch, start, stop)
        assert_equal(draw_slice_torch(spec, 11, stream, batch, start, stop, "cpu"), ref)


@pytest.mark.parametrize("name", ["uniform-random-bags", "gaussian-fixed", "zipf-1.0-random-bags"])
def test_the_slices_of_every_world_size_concatenate_to_the_global_batch(name):
    spec = SPECS[name]
    whole = draw_slice(spec, 5, 0, 2, 0, 64)
    for w in (1, 2, 4):
        size = 64 // w
        slices = [draw_slice_torch(spec, 5, 0, 2, r * size, (r + 1) * size) for r in range(w)]
        got = concat([s.numpy() for s in slices])
        for field in FIELDS:
            assert np.array_equal(getattr(got, field), getattr(whole, field)), (w, field)


@pytest.mark.parametrize(
    "name", ["uniform-multi-hot", "uniform-random-bags", "zipf-1.05-multi-hot"]
)
def test_the_epoch_yields_the_numpy_epochs_batches_from_any_start(name):
    spec = SPECS[name]
    for rank, world in ((0, 1), (1, 2)):
        # 44 samples in batches of 16: the last one partial (12), 6 per rank of 2
        args = (spec, 9, 0, 16, rank, world, 44, 1)
        ours, ref = TorchRandomFastData(*args, device="cpu"), RandomFastData(*args)
        assert len(ours) == len(ref) == 3
        assert [ours.batch_size(i) for i in range(3)] == [16, 16, 12]
        assert_same_batches(ours, ref)
        assert_same_batches(ours.iter_from(2), ref.iter_from(2))


def test_a_million_gaussian_and_zipf_draws_are_equal_with_and_without_exact():
    """exact=False differs only where a float lands within an ulp or so of a rounding
    boundary (module docstring): at 1M draws none is expected, so the count asserted is 0."""
    specs = [
        FastDataSpec(
            dense_features=1,
            table_sizes=(1000,),
            multi_hot_sizes=(100,),
            dist="gaussian",
            rmin=0,
            rmax=1000,
            mu=500,
            sigma=150,
        ),
        FastDataSpec(
            dense_features=1,
            table_sizes=(BIG, 3_000_000),
            multi_hot_sizes=(60, 40),
            dist="zipf",
        ),
    ]
    for spec in specs:
        ref = draw_slice(spec, 3, 0, 1, 0, 10_000)
        assert ref.values.size == 1_000_000
        for exact in (True, False):
            assert_equal(draw_slice_torch(spec, 3, 0, 1, 0, 10_000, exact=exact), ref)


def test_bad_ranges_and_specs_are_refused_like_numpys():
    spec = SPECS["uniform-random-bags"]
    with pytest.raises(ValueError, match="non-empty"):
        draw_slice_torch(spec, 1, 0, 0, 5, 5)
    with pytest.raises(ValueError, match="too large"):
        draw_slice_torch(spec, 1, 0, 0, 0, 1 << 38)
    with pytest.raises(ValueError, match="uniform, gaussian or zipf"):
        draw_slice_torch(FastDataSpec(1, (5,), dist="normal"), 1, 0, 0, 0, 4)
    with pytest.raises(ValueError, match="multiple of 2"):
        TorchRandomFastData(spec, 1, 2, 15, rank=0, world_size=2)


def near_half_integer_uniforms(zipf: _Zipf, s: float) -> np.ndarray:
    """Uniforms u whose zipf tail rank x lies within a few ulp of k + 1/2 (the rounding
    boundary), k spread over [1100, 39M]: where device and numpy floats may round apart."""
    x = np.unique(np.geomspace(1100, 39_000_000, 3000).astype(np.int64)) + 0.5
    w = np.log(x / (zipf.head + 0.5)) if s == 1.0 else (x ** (1.0 - s) - zipf.lo) / (1.0 - s)
    return (zipf.head_mass + w) / zipf.total[0]


@pytest.mark.parametrize("s", [1.0, 1.05])
def test_exact_zipf_redoes_the_ranks_at_a_rounding_boundary_as_numpy(s, monkeypatch):
    spec = FastDataSpec(1, (BIG,), dist="zipf", zipf_exponent=s, multi_hot_sizes=(1,))
    zipf = _Zipf(spec, 7)
    u_np = near_half_integer_uniforms(zipf, s)
    ref = zipf.rows_of(zipf.ranks(u_np, np.zeros(u_np.size, dtype=np.int64)), 0)
    u, table = torch.from_numpy(u_np), torch.zeros(u_np.size, dtype=torch.int64)
    flagged = []
    redo = rft._redo_on_host
    monkeypatch.setattr(rft, "_redo_on_host", lambda o, f, v: (flagged.append(f), redo(o, f, v)))
    # a device whose exp and pow are 4 ulp above numpy's: within _TOL, so still exact
    for name in ("exp", "pow"):
        orig = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, f=orig: f(*a) * (1 + 2.0**-50))
    exact = rft._Indices(spec, 7, torch.device("cpu"), exact=True).zipf_rows(u, table)
    assert int(flagged[0].sum()) == u_np.size  # every one of them is near the boundary
    assert np.array_equal(exact.numpy(), ref)
    loose = rft._Indices(spec, 7, torch.device("cpu"), exact=False).zipf_rows(u, table)
    assert (loose.numpy() != ref).sum() > 0  # what exact mode is for


def test_exact_gaussian_values_redone_on_the_host_are_numpys(monkeypatch):
    spec = SPECS["gaussian-fixed"]
    ref = draw_slice(spec, 2, 0, 0, 0, 500)
    orig = torch.log1p  # a device with a log1p 0.1% off: only the host redo can fix it
    monkeypatch.setattr(torch, "log1p", lambda t: orig(t) * (1 + 1e-3))
    loose = draw_slice_torch(spec, 2, 0, 0, 0, 500, exact=False).numpy()
    assert (loose.values != ref.values).sum() > 0
    monkeypatch.setattr(rft, "_TOL", 1.0)  # every value counts as near a boundary
    assert_equal(draw_slice_torch(spec, 2, 0, 0, 0, 500, exact=True), ref)
