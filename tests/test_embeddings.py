"""The reference's QR and MD embeddings and weighted pooling: md_solver's dims by hand,
the id transform, the forbidden combinations, initial weights and per-iteration losses
against the plain-PyTorch oracle, and 2 ranks training like 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_dist import planning
from dlrm_dist.arch import (
    Arch,
    derive_arch,
    md_solver,
    parameter_order,
    row_weight_parameter,
    sharded_row_weights,
    table_specs,
)
from dlrm_dist.cli import parse_args
from dlrm_dist.embeddings import derive_features
from dlrm_dist.errors import ConfigError
from dlrm_dist.initial_weights import reference_init
from dlrm_dist.model import DLRM
from dlrm_dist.train import run
from tests.multiprocess import launch, train_many
from tests.oracle import OracleDLRM, md_dims, oracle_kwargs, oracle_train

TABLES = "sparse_arch.embedding_bag_collection.embedding_bags"


@pytest.mark.parametrize(
    ("rows", "alpha", "d0", "round_dims", "want"),
    [
        # d_i = d0 (n_0 / n_i)^alpha: 16 * 0.01^0.3 = 4.019, 16 * 1e-4^0.3 = 1.0095
        ([100, 10000, 1000000], 0.3, 16, False, [16, 4, 1]),
        ([1000000, 100, 10000], 0.3, 16, False, [1, 16, 4]),  # in the tables' order
        ([10, 100], 0.5, 16, False, [16, 5]),  # 16 * sqrt(0.1) = 5.06
        ([10, 100], 0.5, 16, True, [16, 4]),  # 2^round(log2 5) = 2^2
        ([1, 4], 1.0, 10, False, [10, 2]),  # 2.5 rounds half to even
        ([1, 4], 1.0, 10, True, [8, 2]),  # 2^round(3.32), 2^1
        ([1, 1000000], 1.0, 16, False, [16, 1]),  # 1.6e-5, at least 1
        ([5, 50, 500], 0.0, 8, False, [8, 8, 8]),  # alpha 0: every table d0
    ],
)
def test_md_solver_dims_by_hand(rows, alpha, d0, round_dims, want):
    assert md_solver(rows, alpha, d0, round_dims) == want
    assert md_dims(rows, alpha, d0, round_dims) == want  # the oracle's own version


def test_qr_ids_and_pooling_weights_by_hand():
    # bags (B = 2): cat_0 [0, 5, 9] [3]; cat_1 [] [2, 2]
    kjt = KeyedJaggedTensor(
        keys=["cat_0", "cat_1"],
        values=torch.tensor([0, 5, 9, 3, 2, 2]),
        lengths=torch.tensor([3, 1, 0, 2]),
    )
    out = derive_features(kjt, ["cat_0"], 4, False, {})
    assert out.keys() == ["cat_0_q", "cat_0_r", "cat_1"]
    assert out.values().tolist() == [0, 1, 2, 0] + [0, 1, 1, 3] + [2, 2]
    assert out.lengths().tolist() == [3, 1, 3, 1, 0, 2] and out.stride() == 2
    assert out.weights_or_none() is None
    w = {"cat_1": torch.tensor([0.5, 1.5, 2.5])}
    weighted = derive_features(kjt, [], 0, True, w)
    assert weighted.weights().tolist() == [1.0, 1.0, 1.0, 1.0, 2.5, 2.5]


BASE = ["--arch-embedding-size=30-300-500", "--arch-sparse-feature-size=4", "--arch-mlp-bot=5-4"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--qr-flag", "--weighted-pooling=fixed"],
            "quotient remainder with weighted pooling is not supported (as in the reference): "
            "drop --weighted-pooling or --qr-flag",
        ),
        (
            ["--md-flag", "--weighted-pooling=learned"],
            "mixed dimensions with weighted pooling is not supported (as in the reference): "
            "drop --weighted-pooling or --md-flag",
        ),
        (
            ["--qr-flag", "--md-flag"],
            "quotient remainder with mixed dimensions is not supported (the reference's QR "
            "tables take one dim): drop --qr-flag or --md-flag",
        ),
        (["--qr-flag", "--qr-collisions=0"], "--qr-collisions must be at least 1"),
        (["--md-flag", "--md-temperature=-1"], "--md-temperature must not be negative"),
        (["--qr-operation=sum"], "--qr-operation=sum is not supported; choose one of"),
        (["--weighted-pooling=yes"], "--weighted-pooling=yes is not supported; choose one of"),
    ],
)
def test_forbidden_combinations_are_one_line_errors(extra, message):
    with pytest.raises(ConfigError) as err:
        parse_args([*BASE, *extra])
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (  # concat: every vector is 2 x the table dim
            ["--qr-flag", "--qr-operation=concat", "--qr-threshold=10"],
            "2 arch-sparse-feature-size 8 does not match last dim of bottom mlp 4 (note that "
            "the last dim of bottom mlp must be 2x the embedding dim)",
        ),
        (
            ["--qr-flag", "--qr-operation=concat", "--arch-mlp-bot=5-8"],
            "--qr-operation=concat makes every table 2 x 4 wide, but t_cat_0 have at most "
            "--qr-threshold=200 rows and stay 4 wide",
        ),
        (
            [
                "--md-flag",
                "--md-round-dims",
                "--arch-sparse-feature-size=12",
                "--arch-mlp-bot=5-12",
            ],
            "--md-round-dims makes the widest table 16 wide, not --arch-sparse-feature-size=12",
        ),
    ],
)
def test_dimension_clashes_are_one_line_errors(extra, message):
    cfg = parse_args([*BASE, *extra])
    with pytest.raises(ConfigError) as err:
        derive_arch(cfg.model)
    assert str(err.value).startswith(message)


def test_arch_qr_md_and_learned_weights():
    qr = derive_arch(parse_args([*BASE, "--qr-flag", "--qr-collisions=7"]).model)
    assert qr.qr_tables == (False, True, True) and qr.emb_dims == (4, 4, 4)
    names = parameter_order(qr)[:5]
    assert names == [
        f"{TABLES}.t_cat_0.weight",
        f"{TABLES}.t_cat_1_q.weight",
        f"{TABLES}.t_cat_1_r.weight",
        f"{TABLES}.t_cat_2_q.weight",
        f"{TABLES}.t_cat_2_r.weight",
    ]
    weights = reference_init(np.random.RandomState(0), qr, 0)
    assert weights[names[1]].shape == (43, 4) and weights[names[2]].shape == (7, 4)
    md = derive_arch(parse_args([*BASE, "--md-flag", "--md-threshold=100"]).model)
    # 4 * (30 / 300)^0.3 = 2.0, 4 * (30 / 500)^0.3 = 1.72
    assert md.emb_dims == (4, 2, 2) and md.md_tables == (False, True, True)
    assert parameter_order(md)[1:4] == [
        f"{TABLES}.t_cat_1.weight",
        "sparse_arch.proj.t_cat_1.weight",
        f"{TABLES}.t_cat_2.weight",
    ]
    # dim 4: the tables shard, rows looked up unpooled, weights in sharded 4-wide tables
    learned = derive_arch(parse_args([*BASE, "--weighted-pooling=learned"]).model)
    assert parameter_order(learned)[:6] == [
        *(f"sparse_arch.embedding_collection.embeddings.t_cat_{i}.weight" for i in range(3)),
        *(f"sparse_arch.row_weight_collection.embeddings.w_cat_{i}.weight" for i in range(3)),
    ]
    weights = reference_init(np.random.RandomState(0), learned, 0)
    assert weights[parameter_order(learned)[4]].shape == (300, 4)
    assert np.all(weights[parameter_order(learned)[4]] == 1)
    # dim 2: replicated tables, one dense weight vector per table, as the reference
    narrow = [*BASE, "--weighted-pooling=learned", "--arch-sparse-feature-size=2"]
    learned = derive_arch(parse_args([*narrow, "--arch-mlp-bot=5-2"]).model)
    assert parameter_order(learned)[3:6] == [
        f"sparse_arch.pooling_weights.t_cat_{i}" for i in range(3)
    ]
    assert reference_init(np.random.RandomState(0), learned, 0)[
        "sparse_arch.pooling_weights.t_cat_1"
    ].shape == (300,)


def _logical(arch: Arch, name: str, value: np.ndarray) -> np.ndarray:
    """A sharded weight table (rows x 4) as the reference's weights: its column 0 (the
    other columns start at one and never train)."""
    weight_tables = {row_weight_parameter(arch, t) for t in table_specs(arch)}
    if sharded_row_weights(arch) and name in weight_tables:
        assert value.shape[1] == 4
        np.testing.assert_array_equal(value[:, 1:], 1.0, err_msg=name)
        return value[:, 0]
    return value


@pytest.mark.parametrize(
    "extra",
    [
        ["--qr-flag", "--qr-threshold=100", "--qr-collisions=6"],
        ["--qr-flag", "--qr-threshold=10", "--qr-operation=concat", "--arch-mlp-bot=5-8"],
        ["--md-flag", "--md-threshold=100"],
        ["--md-flag", "--md-threshold=10", "--md-temperature=0.1"],  # t_cat_0: identity
        ["--weighted-pooling=learned"],
        ["--weighted-pooling=learned", "--arch-sparse-feature-size=2", "--arch-mlp-bot=5-2"],
    ],
    ids=["qr-mult", "qr-concat", "md", "md-identity", "learned", "learned-replicated"],
)
def test_initial_weights_equal_the_references(extra):
    """Both streams: the oracle builds the reference's modules after seeding numpy and
    torch; every tensor bit for bit."""
    arch = derive_arch(parse_args([*BASE, *extra]).model)
    ours = reference_init(np.random.RandomState(5), arch, 5)
    kwargs = oracle_kwargs(parse_args([*BASE, *extra]))
    torch.manual_seed(5)
    oracle = OracleDLRM(
        np.random.RandomState(5),
        kwargs["m_spa"],
        arch.ln_emb,
        arch.ln_bot,
        arch.ln_top,
        qr=kwargs["qr"],
        md=kwargs["md"],
        weighted_pooling=kwargs["weighted_pooling"],
    )
    want = [p.detach().numpy() for p in oracle.parameters()]
    assert len(want) == len(ours)
    for (name, value), expected in zip(ours.items(), want):
        np.testing.assert_array_equal(_logical(arch, name, value), expected, err_msg=name)


SMALL = [
    "--arch-embedding-size=30-250-400-1000",
    "--arch-sparse-feature-size=8",
    "--arch-mlp-bot=7-16-8",
    "--mini-batch-size=16",
    "--num-batches=20",
    "--print-freq=1000",
    "--progress-bar=false",
]


def _assert_parity(argv: list[str]) -> None:
    cfg = parse_args(argv)
    ours = run(cfg)
    want = oracle_train(**oracle_kwargs(cfg))
    np.testing.assert_allclose(ours.losses, want["losses"], rtol=1e-5)
    arch = derive_arch(cfg.model)
    names = parameter_order(arch)
    assert len(names) == len(want["params"])
    for name, value in zip(names, want["params"]):
        got = _logical(arch, name, ours.final_weights[name])
        np.testing.assert_allclose(got, value, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize(
    "extra",
    [
        ["--qr-flag", "--qr-collisions=7", "--learning-rate=0.2"],
        [
            "--qr-flag",
            "--qr-threshold=20",
            "--qr-operation=concat",
            "--qr-collisions=5",
            "--arch-sparse-feature-size=4",
            "--loss-function=bce",
            "--round-targets",
            "--learning-rate=0.2",
        ],
        ["--qr-flag", "--qr-operation=add", "--optimizer=adagrad", "--learning-rate=0.05"],
        ["--md-flag", "--md-threshold=100", "--arch-sparse-feature-size=16", "--learning-rate=0.2"],
        [
            "--md-flag",
            "--md-threshold=100",
            "--md-round-dims",
            "--arch-sparse-feature-size=16",
            "--optimizer=rwsadagrad",
            "--learning-rate=0.05",
        ],
        ["--weighted-pooling=fixed", "--learning-rate=0.2"],
        ["--weighted-pooling=learned", "--learning-rate=1.0"],
        ["--weighted-pooling=learned", "--optimizer=adagrad", "--learning-rate=0.1"],
        ["--weighted-pooling=learned", "--optimizer=rwsadagrad", "--learning-rate=0.1"],
        [
            "--weighted-pooling=learned",
            "--arch-sparse-feature-size=2",
            "--arch-mlp-bot=7-2",
            "--optimizer=rwsadagrad",
            "--learning-rate=0.1",
        ],
    ],
    ids=[
        "qr-mult",
        "qr-concat",
        "qr-add-adagrad",
        "md",
        "md-round-rws",
        "fixed",
        "learned",
        "learned-adagrad",
        "learned-rws",
        "learned-replicated-rws",
    ],
)
def test_losses_match_the_oracle(extra):
    argv = [*SMALL, *extra]
    if "--arch-sparse-feature-size=16" in extra:
        argv.append("--arch-mlp-bot=7-16")
    if "--arch-sparse-feature-size=4" in extra:
        argv.append("--arch-mlp-bot=7-8")
    _assert_parity(argv)


def _plan(argv: list[str], world: int = 2) -> dict[str, str]:
    cfg = parse_args(argv)
    model = DLRM(derive_arch(cfg.model), cfg.model, device="meta")
    plan = planning.plan_for_config(model, cfg, world, "cpu", world)
    return {o.name: o.sharding_type for o in plan.options}


def test_learned_weights_shard_with_their_tables():
    """Learned weights train through unpooled lookups: table and weight table shard
    (a column-wise table's 4-wide weight table goes table-wise); data_parallel, which
    the unpooled lookup does not run here, is an error. Tables of a dim not divisible
    by 4 replicate, with dense weights, as before."""
    learned = [*SMALL, "--weighted-pooling=learned"]
    tw = _plan([*learned, "--sharding-type=table_wise"])
    assert tw == {f"{k}_cat_{i}": "table_wise" for k in "tw" for i in range(4)}
    cw = _plan([*learned, "--sharding-type=column_wise"])
    assert {n: t for n, t in cw.items() if n.startswith("t_")} == {
        f"t_cat_{i}": "column_wise" for i in range(4)
    }
    assert {n: t for n, t in cw.items() if n.startswith("w_")} == {
        f"w_cat_{i}": "table_wise" for i in range(4)
    }
    assert set(_plan(learned).values()) <= {"table_wise", "column_wise"}  # auto
    with pytest.raises(
        ConfigError,
        match=r"^table t_cat_0: sharding_type data_parallel .*"
        r"use one of table_wise \| column_wise$",
    ):
        _plan([*learned, "--sharding-type=data_parallel"])
    narrow = [*learned, "--arch-sparse-feature-size=2", "--arch-mlp-bot=7-2"]
    assert set(_plan([*narrow, "--sharding-type=table_wise"]).values()) == {"data_parallel"}
    fixed = _plan([*SMALL, "--weighted-pooling=fixed", "--sharding-type=table_wise"])
    assert set(fixed.values()) == {"table_wise"}
    result = run(parse_args([*learned, "--learning-rate=1.0"]))
    w = result.final_weights["sparse_arch.row_weight_collection.embeddings.w_cat_0.weight"]
    assert w.shape == (30, 4) and np.abs(w[:, 0] - 1).max() > 1e-4
    assert np.all(w[:, 1:] == 1)


TWO_RANKS = [
    "--arch-embedding-size=40-300-500-700",
    "--arch-sparse-feature-size=8",
    "--arch-mlp-bot=5-8",
    "--loss-function=bce",
    "--round-targets=true",
    "--mini-batch-size=16",
    "--num-batches=10",
    "--learning-rate=0.2",
    "--print-freq=1000",
    "--progress-bar=false",
]
TWO_RANK_CASES = [
    ["--qr-flag", "--qr-collisions=9", "--sharding-type=table_wise"],
    # pipelined (FeatureIds runs a batch ahead), evaluated between steps
    ["--qr-flag", "--qr-operation=add", "--data-generation=random-fast", "--test-freq=5"],
    ["--md-flag", "--md-threshold=100", "--md-round-dims", "--sharding-type=column_wise"],
    ["--weighted-pooling=learned", "--sharding-type=table_wise", "--data-generation=random-fast"],
    # sgd: Adagrad's first step moves a weight by lr g / |g| whatever |g|, so a weight
    # whose gradient is ~0 moves by a summation-order-dependent amount (rwsadagrad is
    # checked against the oracle on one rank)
    ["--weighted-pooling=learned", "--sharding-type=column_wise"],
]


@pytest.mark.timeout(300)
def test_two_ranks_train_like_one():
    argvs = [[*TWO_RANKS, *extra] for extra in TWO_RANK_CASES]
    two = launch(2, train_many, argvs)
    for argv, rank0 in zip(argvs, two[0]):
        one = run(parse_args(argv))
        np.testing.assert_allclose(rank0["losses"], one.losses, rtol=1e-5, atol=1e-7)
        assert rank0["weights"].keys() == one.final_weights.keys()
        for name, want in one.final_weights.items():
            np.testing.assert_allclose(
                rank0["weights"][name], want, rtol=1e-5, atol=1e-6, err_msg=f"{argv} {name}"
            )
        for got, want in zip(rank0["evals"], one.evals, strict=True):
            assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert two[0][1]["pipelined"] and len(two[0][1]["evals"]) == 2
    plain = run(parse_args([*argvs[1], "--pipeline=false"]))
    assert not plain.pipelined
    np.testing.assert_allclose(plain.losses, two[0][1]["losses"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "extra", [["--weighted-pooling=learned"], ["--qr-flag", "--qr-threshold=100"]]
)
def test_a_resumed_run_continues_bit_for_bit(tmp_path, extra):
    """Learned pooling weights (and their Adagrad state), QR tables: in the checkpoint."""
    argv = [
        *SMALL,
        *extra,
        "--num-batches=8",
        "--optimizer=adagrad",
        "--learning-rate=0.5",
        "--data-generation=random-fast",
    ]
    straight = run(parse_args([*argv, f"--checkpoint-dir={tmp_path}", "--checkpoint-every=4"]))
    resumed = run(parse_args([*argv, f"--resume={tmp_path / 'step-4'}"]))
    assert resumed.losses == straight.losses[4:]
    assert resumed.final_weights.keys() == straight.final_weights.keys()
    for name, value in straight.final_weights.items():
        assert np.array_equal(resumed.final_weights[name], value), name


@pytest.mark.timeout(300)
def test_learned_weights_checkpoints_move_between_sharding_types_and_world_sizes(tmp_path):
    """Sharded weight tables and their fused optimizer state go through a checkpoint:
    1 rank table-wise (adagrad) resumed column-wise; 1 rank column-wise resumed on 2 ranks
    table-wise (sgd: see TWO_RANK_CASES); each continues as the uninterrupted run."""
    base = [
        *SMALL,
        "--weighted-pooling=learned",
        "--num-batches=8",
        "--data-generation=random-fast",
    ]
    ada = [*base, "--optimizer=adagrad", "--learning-rate=0.1"]
    straight = run(
        parse_args(
            [
                *ada,
                "--sharding-type=table_wise",
                f"--checkpoint-dir={tmp_path / 'a'}",
                "--checkpoint-every=4",
            ]
        )
    )
    moved = run(
        parse_args([*ada, "--sharding-type=column_wise", f"--resume={tmp_path / 'a' / 'step-4'}"])
    )
    np.testing.assert_allclose(moved.losses, straight.losses[4:], rtol=0, atol=1e-6)
    for name, want in straight.final_weights.items():
        np.testing.assert_allclose(moved.final_weights[name], want, rtol=0, atol=1e-6, err_msg=name)
    sgd = [*base, "--learning-rate=1.0"]
    one = run(
        parse_args(
            [
                *sgd,
                "--sharding-type=column_wise",
                f"--checkpoint-dir={tmp_path / 's'}",
                "--checkpoint-every=4",
            ]
        )
    )
    two = launch(
        2,
        train_many,
        [[*sgd, "--sharding-type=table_wise", f"--resume={tmp_path / 's' / 'step-4'}"]],
    )[0][0]
    np.testing.assert_allclose(two["losses"], one.losses[4:], rtol=0, atol=1e-5)
    for name, want in one.final_weights.items():
        np.testing.assert_allclose(two["weights"][name], want, rtol=0, atol=1e-5, err_msg=name)
