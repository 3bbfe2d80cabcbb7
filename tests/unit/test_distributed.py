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
