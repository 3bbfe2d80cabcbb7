"""QR, MD and weighted pooling trained: per-iteration losses against the plain-PyTorch oracle,
2 ranks training like 1, learned weights sharded with their tables, checkpoints and resume."""

from __future__ import annotations

import numpy as np
import pytest

from dlrm_dist import planning
from dlrm_dist.arch import (
    derive_arch,
    parameter_order,
)
from dlrm_dist.cli import parse_args
from dlrm_dist.errors import ConfigError
from dlrm_dist.model import DLRM
from dlrm_dist.train import run
from tests.multiprocess import launch, train_many
from tests.oracle import oracle_kwargs, oracle_train
from tests.unit.test_embeddings import _logical

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
