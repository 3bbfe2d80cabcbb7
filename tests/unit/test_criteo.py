"""Criteo without files or processes: the TSV parser's cases, the settings' checks, the
first-appearance vocabulary, the reference's shuffles against the oracle's, the shuffle
bijection, multi-hot bags against their laws, torchrec's feature counts, the reference flags,
the planner's pooling factors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dlrm_dist.data import criteo_files, criteo_shuffle, criteo_tsv
from dlrm_dist.data.criteo import _FirstSeen, first_appearance
from dlrm_dist.data.criteo_data import Bijection
from dlrm_dist.data.multi_hot import MultiHot
from dlrm_dist.errors import ConfigError
from tests.common import ROOT
from tests.oracle import oracle_criteo_order


def _line(label, ints, cats) -> str:
    """One raw line: None is an empty field; ints as given; cats as 8-digit hex unless str."""
    fields = ["" if label is None else str(label)]
    fields += ["" if v is None else str(v) for v in ints]
    fields += ["" if v is None else (v if isinstance(v, str) else f"{v:08x}") for v in cats]
    return "\t".join(fields)


def test_feature_counts_are_torchrecs():
    from torchrec.datasets import criteo as tr

    assert (criteo_tsv.NUM_DENSE, criteo_tsv.NUM_SPARSE) == (
        tr.INT_FEATURE_COUNT,
        tr.CAT_FEATURE_COUNT,
    )
    assert criteo_files.DAYS["terabyte"] == tr.DAYS


GOOD = _line(0, [1] * 13, [1] * 26)


BAD = [
    (_line(0, [1] * 12, [1] * 26), "39 tab-separated fields, expected 40"),
    (GOOD + "\t", "41 tab-separated fields"),
    ("", "1 tab-separated fields"),
    (_line(0, [1, "12a"] + [1] * 11, [1] * 26), "field 3 (I2) '12a' is not an integer"),
    (_line(0, ["-"] + [1] * 12, [1] * 26), "field 2 (I1) '-' is not an integer"),
    (_line(0, ["1" * 19] + [1] * 12, [1] * 26), "is not an integer of at most 18 digits"),
    (_line(0, [1] * 13, [1, "zz12"] + [1] * 24), "field 16 (C2) 'zz12' is not a hex category"),
    (_line(0, [1] * 13, ["123456789"] + [1] * 25), "field 15 (C1) '123456789' is not a hex"),
    (_line(2, [1] * 13, [1] * 26), "field 1 (label) '2' is not 0 or 1"),
    (_line(0, [1] * 13, [1] * 25 + ["ab\rcd"]), "field 40 (C26)"),
]


def test_parser_and_describe_agree_on_every_case():
    for bad, _ in BAD:
        parsed = criteo_tsv.parse_block((GOOD + "\n" + bad + "\n").encode())
        assert parsed.bad.tolist() == [1] and parsed.labels.size == 1
        assert criteo_tsv.describe(bad.encode()) != "malformed line"


def test_vocabulary_ids_are_the_order_of_first_appearance():
    rng = np.random.default_rng(0)
    days = [rng.integers(0, 30, size=(n, 26)).astype(np.uint32) for n in (50, 0, 1, 70, 9)]
    days[3][:, 5] = np.uint32(0xFFFFFFFF)  # the largest value, first seen on day 3
    keys = []
    for day in days:
        seen = _FirstSeen()
        for lo in range(0, day.shape[0], 8):  # in blocks, as a day is parsed
            seen.add(day[lo : lo + 8], lo)
        keys.append(seen.result())
    for f in range(26):
        values = np.concatenate([d[:, f] for d in days]).tolist()
        want = list(dict.fromkeys(values))  # a dict filled line by line, day by day
        got = first_appearance(k[f] for k in keys)
        assert got.dtype == np.uint32 and got.tolist() == want


@pytest.mark.parametrize(
    "day_rows",
    [[5, 0, 9, 3, 7, 4, 6], [15, 15, 14, 14, 14, 14, 14], [40, 3, 25, 1, 30, 2, 11], [1] * 24],
)
@pytest.mark.parametrize("how", ["total", "day"])
@pytest.mark.parametrize("memory_map", [False, True])
def test_reference_shuffles_are_the_oracles(monkeypatch, day_rows, how, memory_map):
    monkeypatch.setattr(criteo_shuffle, "_CHUNK", 7)  # steps end inside a day, and
    monkeypatch.setattr(criteo_shuffle, "_TRIM", 5)  # the redraw buffer is cut back
    want_rs, rs = np.random.RandomState(3), np.random.RandomState(3)
    want = oracle_criteo_order(want_rs, day_rows, how, memory_map)
    if memory_map:
        got = criteo_shuffle.reordered_order(rs, day_rows, how)
    else:  # the train split's build, then the test split's
        got = criteo_shuffle.in_memory_order(rs, day_rows[:-1], how)
        criteo_shuffle.in_memory_order(rs, day_rows[:-1], how)
    np.testing.assert_array_equal(got, want)
    assert sorted(got.tolist()) == list(range(sum(day_rows[:-1])))
    assert rs.randint(1 << 30, size=4).tolist() == want_rs.randint(1 << 30, size=4).tolist()


def test_a_block_of_redraws_is_that_many_scalar_redraws():
    """What criteo_shuffle's read-ahead relies on (numpy's legacy bounded integers)."""
    a, b = np.random.RandomState(1), np.random.RandomState(1)
    for high in (1, 6, 23):
        scalars = [a.randint(low=0, high=high) for _ in range(3000)]
        assert b.randint(0, high, size=3000).tolist() == scalars
    assert a.random_sample() == b.random_sample()


@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 1000, 4097])
def test_bijection_is_a_permutation(n):
    perm = Bijection(n, 7)(np.arange(n))
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    if n > 16:
        assert not (perm == np.arange(n)).all()
        assert not (perm == Bijection(n, 8)(np.arange(n))).all()


def test_reference_flags_map_onto_the_data_section():
    from dlrm_dist.cli import parse_args

    d = parse_args(
        [
            "--data-generation=dataset",
            "--data-set=terabyte",
            "--raw-data-file=input/day",
            "--max-ind-range=10000000",
            "--data-sub-sample-rate=0.875",
            "--data-randomize=day",
            "--skip-bad-lines",
        ]
    ).data
    assert (d.data_set, d.raw_data_file, d.max_ind_range) == ("terabyte", "input/day", 10**7)
    assert (d.data_sub_sample_rate, d.data_randomize, d.skip_bad_lines) == (0.875, "day", True)
    assert parse_args(["--data-randomize=day-bijection"]).data.data_randomize == "day-bijection"
    assert criteo_files.processed_dir(d) == Path("input/day_processed")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "needs --raw-data-file"),
        (["--raw-data-file=x", "--data-set=criteo"], "--data-set=criteo is not supported"),
        (["--raw-data-file=x", "--data-randomize=epoch"], "epoch is not .*total-bijection"),
        (["--raw-data-file=x", "--data-sub-sample-rate=1"], "must lie in \\[0, 1\\)"),
        (["--raw-data-file=x", "--data-cat-encoding=hash"], "hash needs --max-ind-range > 0"),
        (["--raw-data-file=x", f"--max-ind-range={1 << 31}"], "must be below 2\\^31"),
    ],
)
def test_dataset_settings_are_checked(argv, message):
    from dlrm_dist.cli import parse_args

    with pytest.raises(ConfigError, match=message):
        parse_args(["--data-generation=dataset", *argv])


SIZES = [1 + t % 5 for t in range(26)]  # 1..5, every table


def test_multi_hot_depends_on_the_seed():
    a = MultiHot([8], [1000], seed=1).bags(0, np.arange(100))
    b = MultiHot([8], [1000], seed=2).bags(0, np.arange(100))
    np.testing.assert_array_equal(a[:, 0], b[:, 0])
    assert (a[:, 1:] != b[:, 1:]).mean() > 0.99
    np.testing.assert_array_equal(a, MultiHot([8], [1000], seed=1).bags(0, np.arange(100)))
    # a slot does not depend on the bag size, nor on the other ids asked with it
    np.testing.assert_array_equal(a[:, :5], MultiHot([5], [1000], seed=1).bags(0, np.arange(100)))
    np.testing.assert_array_equal(a[7:9], MultiHot([8], [1000], seed=1).bags(0, np.array([7, 8])))


def test_multi_hot_uniform_ids_are_uniform():
    rows = 50
    draws = MultiHot([11], [rows], "uniform", seed=5).bags(0, np.arange(20000))[:, 1:]
    counts = np.bincount(draws.ravel(), minlength=rows)
    expected = draws.size / rows
    chi2 = float(((counts - expected) ** 2 / expected).sum())  # ~ chi-square, 49 dof
    assert chi2 < 49 + 6 * math.sqrt(2 * 49), chi2
    big = MultiHot([3], [10**9], "uniform", seed=5).bags(0, np.arange(50000))[:, 1:]
    assert abs(big.mean() / 1e9 - 0.5) < 0.01 and big.max() < 10**9


def _pareto_mod_is(value: int, rows: int, a: float = 0.25, terms: int = 10**6) -> float:
    """P(int(X) % rows == value), X ~ numpy's pareto(a): P(X > x) = (1 + x)^-a, summed over
    X in [m rows + value, m rows + value + 1), m < terms, plus the rest as an integral."""
    m = np.arange(terms, dtype=np.float64) * rows + value
    head = float(((1 + m) ** -a - (2 + m) ** -a).sum())
    x = (terms - 0.5) * rows + value  # sum over m >= terms ~ integral from terms - 1/2
    return head + ((2 + x) ** (1 - a) - (1 + x) ** (1 - a)) / (rows * (1 - a))


@pytest.mark.parametrize("rows", [10, 1000])
def test_multi_hot_pareto_follows_its_closed_form(rows):
    draws = MultiHot([6], [rows], "pareto", seed=7).bags(0, np.arange(40000))[:, 1:].ravel()
    assert draws.min() >= 0 and draws.max() < rows
    numpy_draws = np.random.default_rng(0).pareto(0.25, draws.size).tolist()
    theirs = np.array([int(x) % rows for x in numpy_draws])  # MLPerf's formula, exact ints
    for value in (0, 1, 3):
        want = _pareto_mod_is(value, rows)
        tol = 6 * math.sqrt(want * (1 - want) / draws.size)
        assert abs((draws == value).mean() - want) < tol, (value, want)
        assert abs((theirs == value).mean() - want) < tol  # the closed form is numpy's law
    assert (draws == 0).mean() > 0.15  # concentrated at small ids (uniform: 1 / rows)


def test_multi_hot_settings_are_checked():
    from dlrm_dist.cli import parse_args

    base = ["--data-generation=dataset", "--raw-data-file=x"]
    sizes = ",".join(map(str, SIZES))
    d = parse_args([*base, f"--multi-hot-sizes={sizes}", "--multi-hot-distribution=pareto"]).data
    assert (d.multi_hot_sizes, d.multi_hot_distribution) == (SIZES, "pareto")
    for argv, message in [
        (["--multi-hot-sizes=3,2"], "one positive size per table \\(26 tables: Criteo's"),
        ([f"--multi-hot-sizes=0,{sizes[2:]}"], "table 0 has 0"),
        (["--multi-hot-distribution=pareto"], "pareto needs --data-generation=dataset and"),
        ([f"--multi-hot-sizes={sizes}", "--multi-hot-distribution=zipf"], "zipf is not supp"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_args([*base, *argv])
    with pytest.raises(ConfigError, match="random-fast or dataset"):
        parse_args([f"--multi-hot-sizes={sizes}"])  # the reference's random data
    with pytest.raises(ConfigError, match="needs --data-generation=dataset"):
        parse_args(["--data-generation=random-fast", "--multi-hot-distribution=pareto"])
    mlperf = parse_args(["--config", str(ROOT / "configs" / "mlperf_dcnv2.toml"), *base]).data
    assert len(mlperf.multi_hot_sizes) == 26 and mlperf.multi_hot_distribution == "uniform"


def test_planner_pooling_factors_for_criteo():
    from dlrm_dist import planning
    from dlrm_dist.cli import parse_args

    base = ["--data-generation=dataset", "--raw-data-file=x"]
    one = parse_args(base).data
    assert planning.expected_pooling_factors(one, [10] * 26) == [1.0] * 26
    sizes = ",".join(map(str, SIZES))
    multi = parse_args([*base, f"--multi-hot-sizes={sizes}"]).data
    assert planning.expected_pooling_factors(multi, [10] * 26) == [float(k) for k in SIZES]
