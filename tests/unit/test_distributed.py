"""Splitting the global batch over ranks, without processes."""

from __future__ import annotations

import pytest

from dlrm_dist import distributed
from dlrm_dist.errors import ConfigError


def test_a_batch_the_world_does_not_divide_is_a_clear_error():
    env = distributed.DistEnv(0, 4, 0, 4, None, "gloo")
    assert distributed.local_batch(64, env) == 16
    with pytest.raises(ConfigError, match="--mini-batch-size=30 is not divisible by the world"):
        distributed.local_batch(30, env)


def test_plain_sgd_steps_the_same_bits_as_torch_sgd_and_shares_its_state_dict():
    """The dense optimizer for sgd (distributed.PlainSGD) against torch.optim.SGD: the same
    parameters bit for bit over steps with a changing lr, a parameter without a gradient
    left alone, a sparse gradient (an nn.EmbeddingBag(sparse=True)'s) applied too."""
    import torch

    def model() -> list[torch.nn.Parameter]:
        g = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(*shape, generator=g)) for shape in SHAPES]

    SHAPES = [(7, 5), (5,), (3, 4), (6, 2)]  # the last: a table with sparse gradients
    ours, theirs = model(), model()
    opts = distributed.PlainSGD(ours, lr=0.3), torch.optim.SGD(theirs, lr=0.3)
    g = torch.Generator().manual_seed(1)
    for step, lr in enumerate((0.3, 0.05, 0.011)):
        grads = [torch.randn(*shape, generator=g) for shape in SHAPES[:3]]
        rows = torch.tensor([1, 4, 4]) if step != 1 else torch.tensor([0])
        values = torch.randn(rows.numel(), 2, generator=g)
        table = torch.sparse_coo_tensor(rows[None], values, SHAPES[3])
        for params, opt in zip((ours, theirs), opts):
            opt.param_groups[0]["lr"] = lr
            for p, grad in zip(params, [*grads, table]):
                p.grad = grad.clone()
            if step == 2:
                params[1].grad = None  # no gradient this step: not moved
            opt.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    opts[0].zero_grad()
    assert all(p.grad is None for p in ours)
    opts[0].zero_grad(set_to_none=False)  # nothing to zero: they stay None, as torch's
    assert all(p.grad is None for p in ours)
    ours[0].grad = torch.ones(7, 5)
    opts[0].zero_grad(set_to_none=False)
    assert torch.equal(ours[0].grad, torch.zeros(7, 5))
    assert not torch.equal(ours[0], model()[0])
    state = opts[1].state_dict()
    assert opts[0].state_dict() == state
    opts[0].load_state_dict(state)  # a checkpoint of either loads into the other
    assert opts[0].param_groups[0]["lr"] == 0.011


@pytest.mark.parametrize("tables", [(0, 1, 2), (0, 2)], ids=["all-slices", "some-slices"])
def test_plain_sgd_steps_a_flat_weight_whole_only_when_all_its_table_slices_are_there(tables):
    """torchrec's replicated tables: slices of one flat weight. All of them in the group:
    the weight is stepped whole (one add_); some: each slice, the rest left alone. Either
    way the bits of torch.optim.SGD over the same slices."""
    import torch
    from torchrec.distributed.composable.table_batched_embedding_slice import (
        TableBatchedEmbeddingSlice,
    )

    shapes = [(4, 2), (3, 2), (5, 2)]  # rows x dim of three tables in one weight of 24
    starts = [0, 8, 14]

    def weight_and_slices():
        weight = torch.nn.Parameter(torch.arange(24.0) / 7)
        slices = [
            TableBatchedEmbeddingSlice(weight, a, a + r * d, r, d)
            for a, (r, d) in zip(starts, shapes)
        ]
        return weight, [slices[t] for t in tables]

    (w1, ours), (w2, theirs) = weight_and_slices(), weight_and_slices()
    opt = distributed.PlainSGD(ours, lr=0.5)
    ref = torch.optim.SGD(theirs, lr=0.5)
    whole = opt._targets(opt.param_groups[0]["params"])
    assert (whole == [w1]) == (tables == (0, 1, 2))
    grad = torch.linspace(-1.0, 1.0, 24)
    for step in range(2):
        w1.grad, w2.grad = grad.clone() * (step + 1), grad.clone() * (step + 1)
        opt.step()
        ref.step()
    assert torch.equal(w1.detach(), w2.detach())
    assert not torch.equal(w1.detach(), torch.arange(24.0) / 7)
    if tables == (0, 2):  # the middle table (8..13) is not this optimizer's
        assert torch.equal(w1.detach()[8:14], torch.arange(8.0, 14.0) / 7)
