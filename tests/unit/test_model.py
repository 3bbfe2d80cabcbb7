"""Architecture derivation, the reference's initial weights, and the model's math."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlrm_dist.arch import derive_arch, feature_names, parameter_order
from dlrm_dist.config import ModelConfig
from dlrm_dist.data.reference_random import RandomDataSpec, draw_batch, to_batch
from dlrm_dist.errors import ConfigError
from dlrm_dist.initial_weights import reference_init
from dlrm_dist.model import DLRM, Interaction, make_loss
from tests.oracle import OracleDLRM


def test_arch_of_the_seed_example():
    arch = derive_arch(ModelConfig())  # 3 tables of dim 2, bottom 4-3-2, top 4-2-1
    assert arch.num_fea == 4
    assert arch.num_int == 4 * 3 // 2 + 2 == 8
    assert arch.ln_top == (8, 4, 2, 1)  # the seed's "model arch:" print
    itself = derive_arch(ModelConfig(interaction_itself=True))
    assert itself.num_int == 4 * 5 // 2 + 2 and itself.ln_top[0] == 12
    cat = derive_arch(ModelConfig(interaction="cat"))
    assert cat.num_int == 4 * 2


def test_dimension_errors_use_the_reference_wording():
    with pytest.raises(ConfigError) as err:
        derive_arch(ModelConfig(), dense_features=5)
    assert str(err.value) == "arch-dense-feature-size 5 does not match first dim of bottom mlp 4"
    with pytest.raises(ConfigError) as err:
        derive_arch(ModelConfig(mlp_bot=[4, 3, 5]))
    assert str(err.value) == "arch-sparse-feature-size 2 does not match last dim of bottom mlp 5"


def test_interaction_order_by_hand():
    x = torch.tensor([[1.0, 2.0]])
    e = torch.tensor([[[3.0, 4.0], [5.0, 6.0]]])  # (B=1, F=2, D=2)
    # T = [x, e0, e1]; strict lower triangle row by row: x.e0, x.e1, e0.e1
    assert Interaction(3, "dot", False)(x, e).tolist() == [[1, 2, 11, 17, 39]]
    # with itself: x.x, e0.x, e0.e0, e1.x, e1.e0, e1.e1
    assert Interaction(3, "dot", True)(x, e).tolist() == [[1, 2, 5, 11, 25, 17, 39, 61]]
    assert Interaction(3, "cat", False)(x, e).tolist() == [[1, 2, 3, 4, 5, 6]]


def _oracle_and_ours(cfg: ModelConfig, seed: int = 3):
    arch = derive_arch(cfg)
    oracle = OracleDLRM(
        np.random.RandomState(seed),
        arch.m_spa,
        arch.ln_emb,
        arch.ln_bot,
        arch.ln_top,
        cfg.interaction,
        cfg.interaction_itself,
        cfg.loss_threshold,
    )
    weights = reference_init(np.random.RandomState(seed), arch)
    return arch, oracle, weights


def test_initial_weights_equal_the_reference_draws():
    cfg = ModelConfig(
        sparse_feature_size=4, embedding_sizes=[10, 7, 30], mlp_bot=[5, 8, 4], mlp_top=[6, 1]
    )
    arch, oracle, weights = _oracle_and_ours(cfg)
    names = parameter_order(arch)
    assert list(weights) == names
    for name, param in zip(names, oracle.parameters()):
        np.testing.assert_array_equal(weights[name], param.detach().numpy())
    # spot-check the first table's range: uniform(-sqrt(1/n), sqrt(1/n))
    assert np.abs(weights[names[0]]).max() <= np.sqrt(1 / 10)


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(sparse_feature_size=4, embedding_sizes=[10, 7, 30], mlp_bot=[5, 8, 4]),
        ModelConfig(
            sparse_feature_size=4,
            embedding_sizes=[10, 7],
            mlp_bot=[5, 4],
            interaction_itself=True,
            loss_threshold=0.3,
        ),
        ModelConfig(
            sparse_feature_size=4,
            embedding_sizes=[10, 7],
            mlp_bot=[5, 4],
            interaction="cat",
            mlp_top=[3, 1],
        ),
    ],
)
def test_forward_matches_the_oracle(cfg):
    arch, oracle, weights = _oracle_and_ours(cfg)
    model = DLRM(arch, cfg, device="cpu")
    state = model.state_dict()
    for name, value in weights.items():
        state[name].copy_(torch.from_numpy(value))
    raw = draw_batch(np.random.RandomState(0), RandomDataSpec(5, arch.ln_emb), 9)
    batch = to_batch(raw, feature_names(len(arch.ln_emb)))
    ours = model(batch.dense_features, batch.sparse_features)
    want = oracle(
        torch.from_numpy(raw.dense),
        [torch.from_numpy(o) for o in raw.offsets()],
        [torch.from_numpy(i) for i in raw.indices()],
    )
    assert ours.shape == (9,)
    torch.testing.assert_close(ours, want[:, 0], rtol=1e-6, atol=1e-7)
    if cfg.loss_threshold:
        assert ours.min() >= 0.3 and ours.max() <= 0.7


def test_losses_by_hand():
    p = torch.tensor([0.25, 0.75])
    t = torch.tensor([0.0, 1.0])
    assert make_loss(ModelConfig())(p, t).item() == pytest.approx(0.0625)
    bce = -np.log(0.75)
    assert make_loss(ModelConfig(loss_function="bce"))(p, t).item() == pytest.approx(bce)
    w = make_loss(ModelConfig(loss_function="wbce", loss_weights=[0.5, 2.0]))(p, t).item()
    assert w == pytest.approx((0.5 * bce + 2.0 * bce) / 2)


def test_dcn_interaction_is_the_low_rank_cross_net_formula():
    import torch

    from dlrm_dist.cli import parse_args
    from dlrm_dist.model import Interaction

    cfg = parse_args(
        ["--arch-interaction-op=dcn", "--dcn-num-layers=2", "--dcn-low-rank-dim=3"]
    ).model
    arch = derive_arch(cfg)
    assert arch.num_int == 4 * 2 and arch.ln_top[0] == 8  # (F + 1) D, F = 3, D = 2
    inter = Interaction(arch.num_fea, "dcn", False, arch)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in inter.parameters():
            p.normal_()
    dense, sparse = torch.randn(5, 2), torch.randn(5, 3, 2)
    x0 = torch.cat([dense, sparse.flatten(1)], dim=1).double()
    x = x0
    cross = inter.dcn.crossnet
    for w, v, b in zip(cross.W_kernels, cross.V_kernels, cross.bias):
        x = x0 * (x @ v.double().t() @ w.double().t() + b.double()) + x
    torch.testing.assert_close(inter(dense, sparse).double(), x, rtol=1e-5, atol=1e-5)
