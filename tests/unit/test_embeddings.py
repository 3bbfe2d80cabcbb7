"""The reference's QR and MD embeddings and weighted pooling, without a run: md_solver's dims
by hand, the id transform, the forbidden combinations, the initial weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_dist.arch import (
    Arch,
    derive_arch,
    feature_names,
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
from tests.oracle import OracleDLRM, md_dims, oracle_kwargs

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


class _Reordered(torch.nn.Module):
    """An EBC whose pooled output lists its keys in reverse (as a sharded one may)."""

    def __init__(self, ebc) -> None:
        super().__init__()
        self.ebc = ebc

    def forward(self, features):
        from torchrec.sparse.jagged_tensor import KeyedTensor

        pooled = self.ebc(features).to_dict()
        keys = list(reversed(list(pooled)))
        return KeyedTensor.from_tensor_list(keys, [pooled[k] for k in keys])


def test_the_plain_sparse_arch_pools_each_bag_as_a_sum_in_either_key_order():
    from dlrm_dist.model import DLRM

    cfg = parse_args(BASE).model
    arch = derive_arch(cfg)
    model = DLRM(arch, cfg, device="cpu")
    sparse = model.sparse_arch
    gen = torch.Generator().manual_seed(0)
    for p in sparse.parameters():
        p.data = torch.randn(p.shape, generator=gen)
    rows = arch.ln_emb
    assert len(rows) == 3
    lengths = torch.tensor([2, 0, 3, 1, 1, 2])  # bags (table f, sample b) at 2 f + b
    values = torch.cat(
        [
            torch.randint(0, r, (int(n),))
            for r, n in zip([r for r in rows for _ in range(2)], lengths)
        ]
    )
    kjt = KeyedJaggedTensor.from_lengths_sync(feature_names(len(rows)), values, lengths)
    tables = [
        sparse.embedding_bag_collection.embedding_bags[f"t_cat_{i}"].weight
        for i in range(len(rows))
    ]
    want = torch.zeros(2, len(rows), arch.m_spa)  # by hand: bag (table f, sample b) sums
    at = 0
    for f in range(len(rows)):
        for b in range(2):
            n = int(lengths[2 * f + b])
            for i in values[at : at + n]:
                want[b, f] += tables[f].data[i]
            at += n
    fast = sparse(kjt)
    torch.testing.assert_close(fast, want)
    fast.pow(2).sum().backward()
    grads = [t.grad.clone() for t in tables]
    for t in tables:
        t.grad = None
    sparse.embedding_bag_collection = _Reordered(sparse.embedding_bag_collection)
    slow = sparse(kjt)  # keys out of order: split per key and cat, torchrec's way
    assert torch.equal(slow, fast)
    slow.pow(2).sum().backward()
    for t, g in zip(tables, grads):
        assert torch.equal(t.grad, g)
