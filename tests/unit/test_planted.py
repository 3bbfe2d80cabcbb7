"""Planted labels: the teacher's clicks follow its documented formula, keep every property of
random-fast (determinism, any slice alone, 1 to 64 ranks alike, every bag and table shape,
40M-row tables), and come out the same from the torch generator as from numpy.

Expected values come from the formula in data/planted.py's docstring, evaluated here one
sample at a time with Python integers (hashing.mix64) and math.exp, never from the teacher.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlrm_dist.cli import parse_args
from dlrm_dist.data import planted
from dlrm_dist.data.batch_source import RawBatch
from dlrm_dist.data.hashing import GOLDEN, MASK64, derive_key, mix64
from dlrm_dist.data.random_fast import FastDataSpec, RandomFastData, draw_slice
from dlrm_dist.data.random_fast_torch import TorchRandomFastData, draw_slice_torch
from dlrm_dist.errors import ConfigError
from dlrm_dist.metrics import numbered_run_dir
from tests.common import ROOT, concat

BIG = 40_000_000  # the MLPerf DCNv2 tables' rows
FIELDS = ("dense", "lengths", "values", "targets")
SPECS = {
    "default-job": FastDataSpec(
        13, (100,) * 12 + (1000,) * 3, num_indices_per_lookup=3, fixed=True, labels="planted"
    ),
    "uniform-random-bags": FastDataSpec(4, (100, 7, 3, 1, BIG, 50), labels="planted"),
    "multi-hot-40M": FastDataSpec(
        13, (BIG, 39060, BIG, 7424, 20265, 3), multi_hot_sizes=(3, 2, 1, 2, 6, 1), labels="planted"
    ),
    "zipf-random-bags": FastDataSpec(2, (5000, 20, 1, 1024, BIG), dist="zipf", labels="planted"),
    "gaussian-fixed-rounded": FastDataSpec(
        1,
        (50, 60, 70),
        fixed=True,
        dist="gaussian",
        rmax=40,
        sigma=9,
        round_targets=True,
        labels="planted",
    ),
    "two-tables": FastDataSpec(3, (30, 40), labels="planted"),
    "one-table": FastDataSpec(2, (BIG,), multi_hot_sizes=(4,), labels="planted"),
}


def with_labels(spec: FastDataSpec, labels: str) -> FastDataSpec:
    return FastDataSpec(**{**spec.__dict__, "labels": labels})


def effect(seed: int, table: int, row: int) -> float:
    """e_t(i) of the docstring: ((z >> 43) - 2^20) / 2^20 of z = mix64(key_t + GOLDEN i)."""
    z = mix64((derive_key(seed, planted.STREAM, table) + GOLDEN * int(row)) & MASK64)
    return ((z >> 43) - 2**20) / 2**20


def formula_logits(spec: FastDataSpec, seed: int, raw: RawBatch) -> np.ndarray:
    """The docstring's logit of every sample, one at a time: dense (x_j - 1/2) weights
    1, -1, 1, -1; 2.5 times the bag mean of e of tables 0 .. k-1; 9 times the product of
    the bag means of tables k and k+1, k = min(3, F - 2)."""
    f = len(spec.table_sizes)
    k = 1 if f == 1 else min(3, f - 2)
    bags = [np.split(ix, np.cumsum(ln)[:-1]) for ix, ln in zip(raw.indices(), raw.lengths)]
    out = []
    for i in range(raw.dense.shape[0]):
        x = raw.dense[i].astype(float)
        logit = sum(w * (x[j] - 0.5) for j, w in enumerate([1.0, -1.0, 1.0, -1.0][: len(x)]))
        mean = [float(np.mean([effect(seed, t, r) for r in bags[t][i]])) for t in range(min(f, 5))]
        logit += 2.5 * sum(mean[:k])
        if f >= 2:
            logit += 9.0 * mean[k] * mean[k + 1]
        out.append(logit)
    return np.asarray(out)


def formula_probability(logit: np.ndarray) -> np.ndarray:
    """sigmoid of the logit rounded to a multiple of 1/4096, by math.exp."""
    grid = np.rint(logit * 4096) / 4096
    return np.asarray([1.0 / (1.0 + math.exp(-v)) for v in grid])


def assert_same(a: RawBatch, b: RawBatch) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x, y), f"{name}: {int((x != y).sum())} of {x.size} differ"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_labels_follow_the_documented_formula(name):
    spec, seed = SPECS[name], 7
    raw = draw_slice(spec, seed, 1, 5, 0, 300)
    uniforms = FastDataSpec(**{**spec.__dict__, "labels": "random", "round_targets": False})
    u = draw_slice(uniforms, seed, 1, 5, 0, 300).targets  # what random labels would be
    logit = formula_logits(spec, seed, raw)
    teacher = planted.Teacher.of(spec, seed)
    np.testing.assert_allclose(
        teacher.logits(raw.dense, raw.lengths, raw.values), logit, atol=1e-12
    )
    p = formula_probability(logit)
    np.testing.assert_allclose(
        teacher.probabilities(raw.dense, raw.lengths, raw.values), p, rtol=1e-12
    )
    clear = np.abs(u[:, 0] - p) > 1e-9  # where no rounding could decide u < p
    assert clear.mean() > 0.99
    want = (u[:, 0] < p).astype(np.float32)
    assert np.array_equal(raw.targets[clear, 0], want[clear])
    assert set(np.unique(raw.targets)) <= {0.0, 1.0}
    # the labels are the teacher's only: every other field is random-fast's own
    plain = draw_slice(with_labels(spec, "random"), seed, 1, 5, 0, 300)
    for field in ("dense", "lengths", "values"):
        assert np.array_equal(getattr(raw, field), getattr(plain, field))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_any_slice_alone_and_any_world_size_give_the_same_batch(name):
    spec, batch, seed = SPECS[name], 128, 11
    whole = draw_slice(spec, seed, 0, 3, 0, batch)
    for world in (2, 4, 64):
        size = batch // world
        parts = [draw_slice(spec, seed, 0, 3, r * size, (r + 1) * size) for r in range(world)]
        assert_same(concat(parts), whole)
    odd = draw_slice(spec, seed, 0, 3, 37, 91)  # any range, not a rank's
    assert_same(odd, whole.slice(37, 91))
    ranks = [RandomFastData(spec, seed, 4, batch, rank=r, world_size=4).raw(2) for r in range(4)]
    assert_same(concat(ranks), RandomFastData(spec, seed, 4, batch).raw(2))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_batches_labelled_together_equal_each_batch_drawn_alone(name):
    """At small batches RandomFastData labels several batches in one pass; each must be the
    batch drawn alone (whose labels the formula test checks), read in any order, the
    partial last batch included, and one of them checked against the formula here too."""
    spec, seed, batch = SPECS[name], 5, 24
    data = RandomFastData(spec, seed, 0, batch, data_size=batch * 9 + 8)  # 10 batches
    assert data._plans(batch).group > 1  # the grouped path is the one under test
    alone = [draw_slice(spec, seed, 0, b, 0, data.batch_size(b)) for b in range(len(data))]
    for order in (range(10), range(9, -1, -1), (3, 4, 0, 9, 5, 6, 1, 8, 2, 7, 7)):
        fresh = RandomFastData(spec, seed, 0, batch, data_size=batch * 9 + 8)
        for b in order:
            assert_same(fresh.raw(b), alone[b])
    raw = RandomFastData(spec, seed, 0, batch, data_size=batch * 9 + 8).raw(0)  # a group's
    uniforms = FastDataSpec(**{**spec.__dict__, "labels": "random", "round_targets": False})
    u = draw_slice(uniforms, seed, 0, 0, 0, batch).targets
    p = formula_probability(formula_logits(spec, seed, raw))
    clear = np.abs(u[:, 0] - p) > 1e-9
    assert np.array_equal(raw.targets[clear, 0], (u[clear, 0] < p[clear]).astype(np.float32))


def test_labels_are_deterministic_and_depend_on_the_seed_and_the_batch():
    spec = SPECS["default-job"]
    a = draw_slice(spec, 3, 0, 9, 0, 4096).targets
    assert np.array_equal(a, draw_slice(spec, 3, 0, 9, 0, 4096).targets)
    assert not np.array_equal(a, draw_slice(spec, 4, 0, 9, 0, 4096).targets)  # seed
    assert not np.array_equal(a, draw_slice(spec, 3, 0, 10, 0, 4096).targets)  # batch
    assert not np.array_equal(a, draw_slice(spec, 3, 1, 9, 0, 4096).targets)  # test set


@pytest.mark.parametrize("name", sorted(SPECS))
def test_torch_labels_equal_numpy_labels(name):
    spec = SPECS[name]
    for batch, (start, stop) in ((0, (0, 2048)), (6, (100, 1337))):
        ours = draw_slice_torch(spec, 5, 1, batch, start, stop, "cpu").numpy()
        assert_same(ours, draw_slice(spec, 5, 1, batch, start, stop))
    args = (spec, 9, 3, 64, 1, 2, 0, 0)  # rank 1 of 2
    for got, want in zip(TorchRandomFastData(*args), RandomFastData(*args)):
        assert torch.equal(got.labels, want.labels)
        assert torch.equal(got.sparse_features.values(), want.sparse_features.values())


def test_a_40m_row_table_costs_no_table_and_each_row_has_its_own_effect():
    spec = SPECS["multi-hot-40M"]
    teacher = planted.Teacher.of(spec, 1)
    held = [v.nbytes for v in vars(teacher).values() if isinstance(v, np.ndarray)]
    assert max(held) <= 64  # keys, weights, scales: nothing per row
    rows = np.array([0, 1, BIG - 2, BIG - 1, 12_345_678], dtype=np.int64)
    got = [effect(1, 0, int(r)) for r in rows]
    assert len(set(got)) == len(got) and all(-1.0 <= g < 1.0 for g in got)
    raw = draw_slice(spec, 1, 0, 0, 0, 4096)
    assert raw.values[: 3 * 4096].max() > BIG // 2  # the draws reach the table's far rows


def test_the_teacher_reads_its_tables_only():
    spec = SPECS["default-job"]
    raw = draw_slice(spec, 2, 0, 0, 0, 512)
    teacher = planted.Teacher.of(spec, 2)
    base = teacher.logits(raw.dense, raw.lengths, raw.values)
    values = raw.values.copy()
    values[5 * 3 * 512 :] = 0  # tables 5 .. 14 (bags of 3): the teacher ignores them
    dense = raw.dense.copy()
    dense[:, 4:] = 0.5  # and dense features 4 .. 12
    assert np.array_equal(teacher.logits(dense, raw.lengths, values), base)
    values = raw.values.copy()
    values[3 * 512 : 4 * 512] = 0  # table 3: the pair's first
    assert not np.array_equal(teacher.logits(raw.dense, raw.lengths, values), base)


def auc_of(score: np.ndarray, y: np.ndarray) -> float:
    """AUC by ranks (Mann-Whitney), ties broken arbitrarily (the scores are continuous)."""
    ranks = np.empty(score.size)
    ranks[np.argsort(score)] = np.arange(1, score.size + 1)
    pos = y == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def test_label_rate_follows_the_teachers_probabilities_and_every_part_carries_signal(
    monkeypatch,
):
    spec = SPECS["default-job"]
    raw = draw_slice(spec, 123, 1, 0, 0, 65536)
    teacher = planted.Teacher.of(spec, 123)
    p = teacher.probabilities(raw.dense, raw.lengths, raw.values)
    y = raw.targets[:, 0]
    assert 0.4 < y.mean() < 0.6
    assert abs(y.mean() - p.mean()) < 4 * math.sqrt((p * (1 - p)).sum()) / p.size
    auc = auc_of(p, y)
    assert 0.8 < auc < 0.9  # the default job's known answer (measured 0.845)
    for part in ("PAIR_WEIGHT", "TABLE_WEIGHT"):  # each part of the logit matters
        with monkeypatch.context() as m:
            m.setattr(planted, part, 0.0)
            without = planted.Teacher.of(spec, 123).logits(raw.dense, raw.lengths, raw.values)
        assert auc_of(without, y) < auc - 0.03, part


def test_the_sigmoid_table_is_the_sigmoid_and_covers_every_logit():
    x = np.linspace(0, planted.BOUND, 10001)
    np.testing.assert_allclose(planted.exp_neg(x), np.exp(-x), rtol=1e-13)
    logit = np.linspace(-planted.BOUND + 0.5, planted.BOUND - 0.5, 999)
    np.testing.assert_allclose(planted.sigmoid(logit), formula_probability(logit), rtol=1e-13)
    assert planted.BOUND >= 2 + 3 * planted.TABLE_WEIGHT + planted.PAIR_WEIGHT


def test_planted_settings_need_random_fast_and_the_seed_configs_keep_random_data():
    base = ["--arch-embedding-size=10-10", "--arch-mlp-bot=4-3-2", "--loss-function=bce"]
    for flag in ("--synthetic-labels=planted", "--test-num-batches=2"):
        with pytest.raises(ConfigError, match=f"{flag.split('=')[0]}.*needs --data-generation"):
            parse_args([*base, flag])
    cfg = parse_args([*base, "--data-generation=random-fast", "--synthetic-labels=planted"])
    assert cfg.data.synthetic_labels == "planted"
    for flag in ("--plots", "--numbered-run-dir"):
        with pytest.raises(ConfigError, match=f"{flag} needs --run-dir"):
            parse_args([*base, flag])
    for path in sorted((ROOT / "configs").glob("seed_*.toml")):
        data = parse_args(["--config", str(path)]).data
        assert (data.generation, data.synthetic_labels) == ("random", "random"), path.name
    default = parse_args(["--config", str(ROOT / "configs/default.toml")])
    assert (default.data.generation, default.data.synthetic_labels) == ("random-fast", "planted")
    assert default.metrics.plots and default.metrics.numbered_run_dir


def test_numbered_run_dirs_count_up_and_never_reuse_one(tmp_path):
    base = tmp_path / "runs" / "default"
    assert numbered_run_dir(base) == base / "001"
    (base / "007").mkdir()
    (base / "notes").mkdir()
    assert numbered_run_dir(base) == base / "008"
    assert sorted(p.name for p in base.iterdir()) == ["001", "007", "008", "notes"]
