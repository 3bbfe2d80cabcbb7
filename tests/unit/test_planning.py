"""Planning without a cluster or a process group: constraints from the config, errors that
name the table, MLPerf's tables on 8-128 GPUs, per-rank memory against a hand computation."""

from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np
import pytest
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from dlrm_dist import plan_report, planning
from dlrm_dist.arch import derive_arch
from dlrm_dist.cli import parse_args
from dlrm_dist.data.reference_random import RandomDataSpec, draw_batch
from dlrm_dist.errors import ConfigError
from dlrm_dist.model import DLRM
from tests.common import ROOT

MLPERF = str(ROOT / "configs" / "mlperf_dcnv2.toml")


MLPERF_ROWS = [
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10,
    2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
]  # fmt: skip


GIB = 2**30


CPU_TYPES = ["table_wise", "column_wise", "table_column_wise", "data_parallel"]


def _tables(dims: list[int]) -> list[EmbeddingBagConfig]:
    return [
        EmbeddingBagConfig(
            name=f"t_cat_{i}", embedding_dim=d, num_embeddings=100, feature_names=[f"cat_{i}"]
        )
        for i, d in enumerate(dims)
    ]


def _constraints(dims, device="cpu", overrides=None, *argv):
    cfg = parse_args(list(argv)).sharding
    cfg.tables = overrides or {}
    return planning.table_constraints(_tables(dims), cfg, device, [1.0] * len(dims))


def _allowed(constraints) -> dict[str, tuple[list[str], list[str]]]:
    return {k: (c.sharding_types, c.compute_kernels) for k, c in constraints.items()}


def test_auto_leaves_the_planner_what_the_device_runs():
    cpu = _allowed(_constraints([8, 8]))
    assert cpu == {t: (CPU_TYPES, ["fused", "dense"]) for t in ("t_cat_0", "t_cat_1")}
    cuda = _allowed(_constraints([8], "cuda"))["t_cat_0"]
    assert cuda == (
        [
            "table_wise",
            "row_wise",
            "column_wise",
            "table_row_wise",
            "table_column_wise",
            "data_parallel",
        ],
        ["fused", "fused_uvm", "fused_uvm_caching", "dense"],
    )


def test_a_forced_type_or_kernel_applies_to_every_table():
    forced = _allowed(_constraints([8, 12, 16], "cpu", None, "--sharding-type=column_wise"))
    assert forced == {f"t_cat_{i}": (["column_wise"], ["fused"]) for i in range(3)}
    dense = _allowed(_constraints([8, 12], "cuda", None, "--compute-kernel=dense"))
    assert dense == {f"t_cat_{i}": (["data_parallel"], ["dense"]) for i in range(2)}
    uvm = _allowed(_constraints([8], "cuda", None, "--compute-kernel=fused_uvm_caching"))
    assert uvm["t_cat_0"] == (
        ["table_wise", "row_wise", "column_wise", "table_row_wise", "table_column_wise"],
        ["fused_uvm_caching"],
    )


def test_the_cache_ratio_sizes_the_hbm_cache_of_uvm_cached_tables():
    argv = ["--compute-kernel=fused_uvm_caching", "--embedding-cache-ratio=0.01"]
    cached = _constraints([8, 16], "cuda", {"t_cat_1": {"compute_kernel": "fused"}}, *argv)
    assert cached["t_cat_0"].cache_params.load_factor == 0.01
    assert cached["t_cat_1"].cache_params is None  # not UVM-cached: no cache
    assert _constraints([8], "cuda", None, argv[0])["t_cat_0"].cache_params is None
    with pytest.raises(ConfigError, match="--embedding-cache-ratio must lie in"):
        parse_args(["--embedding-cache-ratio=2"])


def test_a_1_percent_cache_plans_mlperf_onto_16_gb_gpus():
    cfg = parse_args(
        [
            "--config",
            str(ROOT / "configs/mlperf_dcnv2.toml"),
            "--compute-kernel=fused_uvm_caching",
            "--embedding-cache-ratio=0.01",
            "--optimizer=rwsadagrad",
            "--hbm-gb=16",
            "--ddr-gb=256",
        ]
    )
    model = DLRM(derive_arch(cfg.model), cfg.model, device="meta")
    result = planning.plan_for_config(model, cfg, 8, "cuda", 8)
    text = plan_report.describe_plan(result)
    big = next(line for line in text.splitlines() if line.startswith("t_cat_0 "))
    hbm, ddr = (float(x) for x in big.split()[-2:])
    weights = 40_000_000 * 128 * 4 / GIB  # 19.07 GB: in host memory, 1 % cached in HBM
    assert ddr == pytest.approx(weights, rel=0.05) and hbm < 0.05 * weights


def test_overrides_by_table_or_feature_name_win_over_the_forced_setting():
    got = _allowed(
        _constraints(
            [8, 8, 8, 8],
            "cpu",
            {
                "t_cat_1": {"sharding_type": "table_wise"},
                "cat_2": {"compute_kernel": "dense"},  # by feature name: replicated
                "t_cat_3": {"sharding_type": "data_parallel"},  # the kernel follows
            },
            "--sharding-type=column_wise",
        )
    )
    assert got == {
        "t_cat_0": (["column_wise"], ["fused"]),
        "t_cat_1": (["table_wise"], ["fused"]),
        "t_cat_2": (["data_parallel"], ["dense"]),
        "t_cat_3": (["data_parallel"], ["dense"]),
    }


def test_dims_not_divisible_by_4_are_replicated_even_when_a_type_is_forced(caplog):
    with caplog.at_level(logging.INFO, logger="dlrm_dist"):
        got = _allowed(_constraints([2, 8], "cpu", None, "--sharding-type=table_wise"))
    assert got == {
        "t_cat_0": (["data_parallel"], ["dense"]),
        "t_cat_1": (["table_wise"], ["fused"]),
    }
    assert "1 table(s) (t_cat_0) have a dim not divisible by 4" in caplog.text


def test_pooling_factors_are_the_multi_hot_sizes_or_the_mean_bag_size():
    data = parse_args(["--arch-embedding-size=1000000-3-1"]).data  # 10 indices per lookup
    got = planning.expected_pooling_factors(data, [1000000, 3, 1])
    # E[round(max(1, u c))] by hand: c = 10: .15 * 1 + .1 * (2 + ... + 9) + .05 * 10;
    # c = 3: .5 * 1 + (1/3) * 2 + (1/6) * 3; c = 1: 1
    np.testing.assert_allclose(got, [5.05, 5 / 3, 1.0])
    # and the reference's generator agrees (a big table: the dedup removes ~nothing)
    rs = np.random.RandomState(0)
    lengths = draw_batch(rs, RandomDataSpec(1, (1000000,)), 20000).lengths
    assert abs(lengths.mean() - 5.05) < 0.05
    fixed = parse_args(["--num-indices-per-lookup=4", "--num-indices-per-lookup-fixed"]).data
    assert planning.expected_pooling_factors(fixed, [100, 2]) == [4.0, 4.0]
    multi = parse_args(["--data-generation=random-fast", "--multi-hot-sizes=3-100-1"]).data
    assert planning.expected_pooling_factors(multi, [4, 3, 2]) == [3.0, 100.0, 1.0]


@pytest.mark.parametrize(
    ("overrides", "argv", "message"),
    [
        (
            None,
            ["--sharding-type=row_wise"],
            "table t_cat_0: sharding_type row_wise (from --sharding-type) needs CUDA; on "
            "CPU use one of table_wise | column_wise | table_column_wise | data_parallel",
        ),
        (
            {"t_cat_1": {"sharding_type": "table_row_wise"}},
            [],
            "table t_cat_1: sharding_type table_row_wise (from [sharding.tables.t_cat_1]) "
            "needs CUDA; on CPU use one of table_wise | column_wise | table_column_wise | "
            "data_parallel",
        ),
        (
            {"cat_0": {"compute_kernel": "fused_uvm"}},
            [],
            "table t_cat_0: compute_kernel fused_uvm (from [sharding.tables.t_cat_0]) needs "
            "CUDA; on CPU use one of fused | dense",
        ),
        (
            {"t_cat_7": {"sharding_type": "table_wise"}},
            [],
            "[sharding.tables.t_cat_7] names no table; the tables are t_cat_0, t_cat_1, "
            "t_cat_2 (or name one by its feature: cat_0, cat_1, cat_2)",
        ),
        (
            {"t_cat_2": {"sharding_type": "column_wise"}},
            [],
            "table t_cat_2: sharding_type column_wise (from [sharding.tables.t_cat_2]) needs "
            "an embedding dim divisible by 4 (FBGEMM's fused kernels), but its dim is 6; set "
            'sharding_type = "data_parallel" for it',
        ),
        (
            {"t_cat_2": {"compute_kernel": "fused"}},
            [],
            "table t_cat_2: compute_kernel fused (from [sharding.tables.t_cat_2]) needs an "
            "embedding dim divisible by 4",
        ),
        (
            {"t_cat_1": {"sharding_type": "data_parallel", "compute_kernel": "fused"}},
            [],
            "table t_cat_1: sharding_type data_parallel (from [sharding.tables.t_cat_1]) and "
            "compute_kernel fused (from [sharding.tables.t_cat_1]) do not go together",
        ),
        (
            {"t_cat_1": {"sharding_type": "auto"}, "cat_1": {"compute_kernel": "dense"}},
            [],
            "[sharding.tables] sets t_cat_1 twice (as t_cat_1 and its feature cat_1); keep one",
        ),
    ],
    ids=[
        "forced-type-cpu",
        "override-type-cpu",
        "override-kernel-cpu",
        "unknown-table",
        "dim-type",
        "dim-kernel",
        "dp-fused",
        "twice",
    ],
)
def test_config_errors_name_the_table_and_what_to_do(overrides, argv, message):
    with pytest.raises(ConfigError) as err:
        _constraints([8, 8, 6], "cpu", overrides, *argv)
    assert str(err.value).startswith(message)


def _model(argv: list[str]):
    cfg = parse_args(argv)
    return cfg, DLRM(derive_arch(cfg.model, cfg.data.dense_features), cfg.model, device="meta")


def test_a_table_that_does_not_fit_is_named_with_what_it_needs():
    cfg, model = _model(
        [
            "--arch-embedding-size=40000000-100",
            "--arch-sparse-feature-size=128",
            "--arch-mlp-bot=4-128",
            "--compute-kernel=fused",
            "--hbm-gb=1",
        ]
    )
    with pytest.raises(ConfigError) as err:
        planning.plan_for_config(model, cfg, 1, "cuda", 1)
    message = str(err.value)
    # 40e6 rows * 128 * 4 bytes (sgd: no state) = 19.07 GiB, plus a few KB of batch I/O
    assert message.startswith(
        "cannot fit on one rank: t_cat_0 (40000000 x 128) needs 19.07 GB HBM (fused); a rank "
        "has 0.85 GB HBM usable"  # 1 GiB less torchrec's 15% margin (and a few KB)
    )
    assert "raise --hbm-gb (now 1.0), use more ranks (now 1)" in message
    assert "\n" not in message


def test_tables_that_fit_alone_but_not_together_say_how_much_is_missing():
    cfg, model = _model(
        [
            "--arch-embedding-size=" + "-".join(["1000000"] * 10),
            "--arch-sparse-feature-size=64",
            "--arch-mlp-bot=4-64",
            "--ddr-gb=1",
        ]
    )
    with pytest.raises(ConfigError) as err:
        planning.plan_for_config(model, cfg, 2, "cpu", 2)
    # 10 tables * 1e6 rows * 64 * 4 bytes = 2.38 GiB (sgd), on two ranks of 1 GiB
    assert str(err.value).startswith(
        "cannot place all 10 tables together: they need at least 2.38 GB DDR in all, 2 ranks have "
    )
    assert "raise --ddr-gb (now 1.0), use more ranks (now 2)" in str(err.value)


def _rank_set(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def _per_rank(description: str, column: int) -> dict[int, float]:
    """{rank: GB} from the per-rank section (column 1 HBM, 2 DDR)."""
    lines = description.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("ranks ")))
    out = {}
    for line in lines[start + 1 :]:
        if not re.match(r"^\d", line):
            break
        cells = line.split()
        out.update(dict.fromkeys(_rank_set(cells[0]), float(cells[column])))
    return out


def _row(description: str, table: str) -> str:
    return next(line for line in description.splitlines() if line.startswith(table + " "))


def _assert_mlperf_plan(text: str, world: int) -> None:
    assert f"26 tables on {world} cuda rank(s)" in text
    for i, rows in enumerate(MLPERF_ROWS):
        assert f" {rows} x 128 " in _row(text, f"t_cat_{i}")
    hbm = _per_rank(text, 1)
    assert sorted(hbm) == list(range(world))
    # every weight and its Adagrad accumulator is somewhere: 204,184,588 rows * 128 * 4
    # bytes * 2, plus each shard's input/output buffers on top
    weights_and_state = sum(MLPERF_ROWS) * 128 * 4 * 2 / GIB
    assert weights_and_state < sum(hbm.values()) < weights_and_state * 1.25
    assert max(hbm.values()) < 141 * 0.85


@pytest.mark.parametrize("world", [8, 128])  # and 64 through the CLI, below
def test_mlperf_plans_on_8_to_128_gpus_of_141_gb(world):
    cfg, model = _model(["--config", MLPERF, "--hbm-gb=141"])
    result = planning.plan_for_config(model, cfg, world, "cuda", 8)
    _assert_mlperf_plan(plan_report.describe_plan(result), world)


@pytest.mark.parametrize(
    ("optimizer", "state"), [("sgd", 0), ("adagrad", 1), ("rwsadagrad", 1 / 64)]
)
def test_per_rank_memory_of_a_table_wise_plan_matches_a_hand_count(optimizer, state):
    batch, world, dim, rows, bags = 4096, 2, 64, [4_000_000, 2_000_000], [2, 3]
    cfg, model = _model(
        [
            f"--arch-embedding-size={rows[0]}-{rows[1]}",
            f"--arch-sparse-feature-size={dim}",
            f"--arch-mlp-bot=4-{dim}",
            "--data-generation=random-fast",
            "--multi-hot-sizes=2-3",
            f"--mini-batch-size={batch * world}",
            f"--optimizer={optimizer}",
            "--sharding-type=table_wise",
            "--ddr-gb=16",
        ]
    )
    text = plan_report.describe_plan(planning.plan_for_config(model, cfg, world, "cpu", world))
    want = {r: 0.0 for r in range(world)}
    for i, (n, k) in enumerate(zip(rows, bags)):
        row = _row(text, f"t_cat_{i}").split()
        assert row[4:6] == ["table_wise", "fused"]
        weights = n * dim * 4 * (1 + state)
        # torchrec's table-wise I/O: every rank's ids (8-byte) in, every rank's pooled
        # rows (fp32) out, counted on the rank holding the table
        io = batch * world * k * 8 + batch * world * dim * 4
        assert float(row[8]) == pytest.approx((weights + io) / GIB, abs=5e-4)
        want[int(row[6])] += (weights + io) / GIB
    got = _per_rank(text, 2)
    assert got == pytest.approx(want, abs=1e-3)
    assert "memory: the planner's estimates per shard" in text


def test_ranks_are_shown_compactly():
    assert plan_report.compact_ranks([9, 0, 1, 2, 3, 7, 10]) == "0-3,7,9-10"


def _types(result) -> dict[str, str]:
    return {o.name: o.sharding_type for o in result.options}


@pytest.mark.parametrize("world", [1, 2])
def test_one_cpu_rank_replicates_the_small_tables_it_may_choose_for(world, caplog):
    # 4096 x 16 = 65,536 weights: small; 4097 x 16: not; t_cat_2 set by its own override
    sizes = "100-4096-100-4097"
    cfg, model = _model(
        [
            f"--arch-embedding-size={sizes}",
            "--arch-sparse-feature-size=16",
            "--arch-mlp-bot=4-16",
            "--ddr-gb=16",
        ]
    )
    cfg = dataclasses.replace(
        cfg,
        sharding=dataclasses.replace(
            cfg.sharding, tables={"t_cat_2": {"sharding_type": "table_wise"}}
        ),
    )
    with caplog.at_level(logging.INFO, logger="dlrm_dist"):
        types = _types(planning.plan_for_config(model, cfg, world, "cpu", world))
    if world == 1:
        assert types["t_cat_0"] == types["t_cat_1"] == "data_parallel"
        assert types["t_cat_2"] == "table_wise"
        assert "one rank: 2 small table(s) (t_cat_0, t_cat_1) run data_parallel" in caplog.text
    else:
        assert "small table" not in caplog.text
    assert types["t_cat_3"] in planning.SHARDING_TYPES_BY_DEVICE["cpu"]


def test_one_cpu_rank_leaves_forced_settings_and_fp16_tables_to_the_planner():
    for argv in (
        ["--sharding-type=table_wise"],
        ["--compute-kernel=fused"],
        ["--embedding-precision=fp16"],
    ):
        cfg, model = _model(
            [
                "--arch-embedding-size=100-200",
                "--arch-sparse-feature-size=16",
                "--arch-mlp-bot=4-16",
                *argv,
            ]
        )
        tables = planning.embedding_tables(model)
        constraints = planning.table_constraints(tables, cfg.sharding, "cpu", [1.0, 1.0])
        before = {k: list(c.sharding_types) for k, c in constraints.items()}
        planning._replicate_small_tables(tables, constraints)
        assert {k: c.sharding_types for k, c in constraints.items()} == before, argv
