"""Fast checks of the reference oracle against hand-derived values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tests.oracle import (
    OracleDLRM,
    OracleLRPolicy,
    interaction_indices,
    num_interaction_features,
    oracle_train,
    seed_style_batch,
    seed_style_batches,
)

# ------------------------------------------------------------------------ (a) data

# The seed document's worked example: seed 1, m_den 4, tables (4, 3, 2), batch 2,
# 3 batches, up to 10 lookups per bag (not fixed), uniform indices.
SEED_DOC_BATCHES = [
    {
        "X": [
            [0.41702, 0.720325, 0.000114375, 0.302333],
            [0.146756, 0.0923386, 0.18626, 0.345561],
        ],
        "indices": [[1, 2, 0, 1, 3], [1, 0], [0, 1, 1]],
        "lengths": [[2, 3], [1, 1], [2, 1]],
        "T": [[0.8946], [0.0850]],
    },
    {
        "X": [[0.0391, 0.1698, 0.8781, 0.0983], [0.4211, 0.9579, 0.5332, 0.6919]],
        "indices": [[2, 0, 2, 3], [1, 2, 1], [0, 0]],
        "lengths": [[1, 3], [2, 1], [1, 1]],
        "T": [[0.6788], [0.2116]],
    },
    {
        "X": [[0.2655, 0.4916, 0.0534, 0.5741], [0.1467, 0.5893, 0.6998, 0.1023]],
        "indices": [[1, 2, 2], [1, 2, 0, 2], [1, 0]],
        "lengths": [[2, 1], [2, 2], [1, 1]],
        "T": [[0.9275], [0.3478]],
    },
]


def test_seed_document_worked_example() -> None:
    rs = np.random.RandomState(12345)
    rs.rand(7)  # whatever was drawn before is discarded by the reseed at batch 0
    batches = list(
        seed_style_batches(
            rs,
            1,
            4,
            (4, 3, 2),
            data_size=0,
            num_batches=3,
            mini_batch_size=2,
            num_indices_per_lookup=10,
            fixed=False,
        )
    )
    assert len(batches) == 3
    for (X, offsets, indices, T), want in zip(batches, SEED_DOC_BATCHES, strict=True):
        assert X.dtype == torch.float32 and X.shape == (2, 4)
        np.testing.assert_allclose(X.numpy(), want["X"], atol=5e-5)
        assert [i.tolist() for i in indices] == want["indices"]
        assert all(i.dtype == torch.int64 for i in indices + offsets)
        # lengths [a, b] <=> offsets [0, a]
        assert [o.tolist() for o in offsets] == [[0, ln[0]] for ln in want["lengths"]]
        assert T.dtype == torch.float32 and T.shape == (2, 1)
        np.testing.assert_allclose(T.numpy(), want["T"], atol=5e-5)
    # first batch X[0] to the printed precision
    np.testing.assert_allclose(
        batches[0][0][0].numpy(), [0.417022, 0.720325, 0.000114375, 0.302333], rtol=1e-5
    )


def test_batch_sizes_and_lazy_reseed() -> None:
    rs = np.random.RandomState(0)
    it = seed_style_batches(
        rs,
        3,
        2,
        (5,),
        data_size=7,
        num_batches=0,
        mini_batch_size=3,
        num_indices_per_lookup=2,
        fixed=True,
    )
    sizes = [b[0].shape[0] for b in it]
    assert sizes == [3, 3, 1]  # ceil(7 / 3) batches, the last one partial
    # The stream is reseeded only when batch 0 is drawn: a draw made between
    # batches 0 and 1 shifts batch 1.
    it = seed_style_batches(rs, 3, 2, (5,), 7, 0, 3, 2, True)
    b0 = next(it)
    ref = np.random.RandomState(3)
    first = seed_style_batch(ref, 2, (5,), 3, 2, True)
    assert torch.equal(b0[0], first[0])
    rs.rand(1)
    ref.rand(1)
    assert torch.equal(next(it)[0], seed_style_batch(ref, 2, (5,), 3, 2, True)[0])


def test_gaussian_dedups_before_int_cast_and_round_targets() -> None:
    # Fixed bags of 6 Gaussian draws on [0, 9]; the reference dedups the floats
    # and only then truncates, so repeated indices survive inside a bag.
    seen_duplicate = False
    for seed in range(20):
        rs = np.random.RandomState(seed)
        _, offsets, indices, T = seed_style_batch(
            rs,
            1,
            (10,),
            1,
            6,
            True,
            dist="gaussian",
            rmin=0.0,
            rmax=9.0,
            sigma=3.0,
            round_targets=True,
        )
        ref = np.random.RandomState(seed)
        ref.rand(1, 1)
        raw = np.clip(ref.normal(4.5, 3.0, 6), 0.0, 9.0)
        assert indices[0].tolist() == np.unique(raw).astype(np.int64).tolist()
        assert offsets[0].tolist() == [0]
        assert float(T[0, 0]) in (0.0, 1.0)
        bag = indices[0].tolist()
        seen_duplicate |= len(set(bag)) < len(bag)
    assert seen_duplicate


# ----------------------------------------------------------------- (b) interaction


def test_interaction_index_order_by_hand() -> None:
    assert interaction_indices(3) == ([1, 2, 2], [0, 0, 1])
    assert interaction_indices(3, itself=True) == (
        [0, 1, 1, 2, 2, 2],
        [0, 0, 1, 0, 1, 2],
    )
    assert num_interaction_features(2, 2) == 3 + 2
    assert num_interaction_features(2, 2, itself=True) == 6 + 2
    assert num_interaction_features(2, 2, "cat") == 6

    model = OracleDLRM(np.random.RandomState(0), 2, (3, 2), (2, 2), (5, 1))
    x = torch.tensor([[1.0, 2.0]])
    e0 = torch.tensor([[3.0, 4.0]])
    e1 = torch.tensor([[5.0, 6.0]])
    # pairs (1,0) = x.e0 = 11, (2,0) = x.e1 = 17, (2,1) = e0.e1 = 39
    assert model.interact(x, [e0, e1]).tolist() == [[1.0, 2.0, 11.0, 17.0, 39.0]]
    model.interaction_itself = True
    # (0,0)=5, (1,0)=11, (1,1)=25, (2,0)=17, (2,1)=39, (2,2)=61
    assert model.interact(x, [e0, e1]).tolist() == [[1.0, 2.0, 5.0, 11.0, 25.0, 17.0, 39.0, 61.0]]
    model.interaction = "cat"
    assert model.interact(x, [e0, e1]).tolist() == [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]


# ------------------------------------------------------------------- (c) LR policy


def _policy_lrs(warmup: int, decay_start: int, num_decay: int, steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = OracleLRPolicy(opt, warmup, decay_start, num_decay)
    lrs = [opt.param_groups[0]["lr"]]  # _step_count == 1 after construction
    for _ in range(steps - 1):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def test_lr_policy_by_hand() -> None:
    # _step_count s = 1..10, W=2, D=4, N=4:
    # s=1 warmup 1-(2-1)/2=0.5; s=2,3 frozen at 0.5; s=4..7 decay ((4-(s-4))/4)^2 =
    # 1, 0.5625, 0.25, 0.0625; s>=8 frozen at 0.0625.
    want = [0.5, 0.5, 0.5, 1.0, 0.5625, 0.25, 0.0625, 0.0625, 0.0625, 0.0625]
    assert _policy_lrs(2, 4, 4, 10) == pytest.approx([2.0 * w for w in want])
    # no decay: warmup then the base rate
    assert _policy_lrs(3, 3, 0, 5) == pytest.approx([2 / 3, 4 / 3, 2.0, 2.0, 2.0])
    # decay that never computed a rate yet: base rate (the reference would crash)
    assert _policy_lrs(0, 3, 2, 5) == pytest.approx([2.0, 2.0, 2.0, 0.5, 0.5])
    # floor at 1e-7
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-9)
    OracleLRPolicy(opt, 0, 1, 3)
    assert opt.param_groups[0]["lr"] == 1e-7
    with pytest.raises(ValueError):
        _policy_lrs(3, 2, 1, 1)


# ------------------------------------------------------------ (d) SGD by hand (FD)

SEED = 7
LN_EMB = (3, 2)
LN_BOT = (2, 2)
LN_TOP = (5, 3, 1)  # 3 features -> 3 pairs + 2 dense = 5 inputs


def _hand_init(seed: int) -> list[np.ndarray]:
    """Initial parameters drawn in the documented order, float32 -> float64."""
    rs = np.random.RandomState(seed)
    params = []
    for n in LN_EMB:
        params.append(rs.uniform(-math.sqrt(1 / n), math.sqrt(1 / n), (n, 2)).astype(np.float32))
    for widths in (LN_BOT, LN_TOP):
        for n_in, n_out in itertools.pairwise(widths):
            params.append(
                rs.normal(0, math.sqrt(2 / (n_in + n_out)), (n_out, n_in)).astype(np.float32)
            )
            params.append(rs.normal(0, math.sqrt(1 / n_out), n_out).astype(np.float32))
    return [p.astype(np.float64) for p in params]


def _hand_loss(params: list[np.ndarray], batch, loss: str, weights: tuple[float, float]) -> float:
    """Numpy float64 forward + loss with explicit loops."""
    emb0, emb1, wb, bb, w1, b1, w2, b2 = params
    X = batch[0].numpy().astype(np.float64)
    T = batch[3].numpy().astype(np.float64)
    total = 0.0
    n = X.shape[0]
    for s in range(n):
        feats = [np.maximum(wb @ X[s] + bb, 0.0)]
        for t, table in enumerate((emb0, emb1)):
            off = batch[1][t].tolist() + [len(batch[2][t])]
            bag = batch[2][t].tolist()[off[s] : off[s + 1]]
            feats.append(sum(table[i] for i in bag))
        r = [feats[0][0], feats[0][1]]
        for i in range(3):
            for j in range(i):
                r.append(float(feats[i] @ feats[j]))
        h = np.maximum(w1 @ np.array(r) + b1, 0.0)
        p = 1.0 / (1.0 + math.exp(-(float(w2[0] @ h) + float(b2[0]))))
        y = T[s, 0]
        if loss == "mse":
            total += (p - y) ** 2
        else:
            w = weights[int(y)] if loss == "wbce" else 1.0
            total += -w * (y * math.log(p) + (1 - y) * math.log(1 - p))
    return total / n


def _fd_grad(params, batch, loss, weights, eps=1e-6) -> list[np.ndarray]:
    grads = []
    for p in params:
        g = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + eps
            up = _hand_loss(params, batch, loss, weights)
            p[idx] = old - eps
            down = _hand_loss(params, batch, loss, weights)
            p[idx] = old
            g[idx] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


@pytest.mark.parametrize(
    ("loss", "round_targets"), [("mse", False), ("bce", False), ("wbce", True)]
)
def test_three_sgd_steps_by_hand(loss: str, round_targets: bool) -> None:
    weights = (1.0, 3.0)
    base_lr = 0.5
    out = oracle_train(
        seed=SEED,
        m_spa=2,
        ln_emb=LN_EMB,
        ln_bot=LN_BOT,
        ln_top_user=LN_TOP[1:],
        loss_function=loss,
        loss_weights=weights,
        learning_rate=base_lr,
        data_size=0,
        num_batches=3,
        mini_batch_size=2,
        num_indices_per_lookup=3,
        round_targets=round_targets,
        warmup=2,
        decay_start=2,
        num_decay=2,
    )

    params = _hand_init(SEED)
    for got, want in zip(out["init_params"], params, strict=True):
        np.testing.assert_array_equal(got, want.astype(np.float32))

    # W=2, D=2, N=2: s=1 warmup 0.5, s=2 decay scale 1, s=3 scale (1/2)^2
    lrs = [base_lr * 0.5, base_lr * 1.0, base_lr * 0.25]
    assert out["lrs"] == pytest.approx(lrs)
    batches = list(
        seed_style_batches(
            np.random.RandomState(0),
            SEED,
            2,
            LN_EMB,
            0,
            3,
            2,
            3,
            False,
            round_targets=round_targets,
        )
    )
    for step, batch in enumerate(batches):
        assert out["losses"][step] == pytest.approx(
            _hand_loss(params, batch, loss, weights), rel=1e-5
        )
        grads = _fd_grad(params, batch, loss, weights)
        params = [p - lrs[step] * g for p, g in zip(params, grads, strict=True)]

    moved = max(
        float(np.abs(a - b).max()) for a, b in zip(out["params"], out["init_params"], strict=True)
    )
    assert moved > 1e-3
    for got, want in zip(out["params"], params, strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_epochs_replay_the_same_data() -> None:
    out = oracle_train(
        seed=3,
        m_spa=2,
        ln_emb=(4, 3),
        ln_bot=(3, 2),
        ln_top_user=(2, 1),
        learning_rate=0.0,
        nepochs=2,
        data_size=5,
        mini_batch_size=2,
    )
    assert len(out["losses"]) == 6
    assert out["losses"][:3] == out["losses"][3:]
    for got, want in zip(out["params"], out["init_params"], strict=True):
        np.testing.assert_array_equal(got, want)
