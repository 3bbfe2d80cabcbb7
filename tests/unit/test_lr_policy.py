"""The reference's LR policy, by hand and against the oracle's scheduler."""

from __future__ import annotations

import pytest
import torch

from dlrm_dist.lr_policy import LRPolicy, lr_at
from tests.oracle import OracleLRPolicy


def test_hand_values_warmup_then_decay():
    # warmup 2, decay from step 4 over 4 steps; step s counts from 1
    got = [lr_at(1.0, s, 2, 4, 4) for s in range(1, 11)]
    assert got == pytest.approx([0.5, 0.5, 0.5, 1.0, 0.5625, 0.25, 0.0625, 0.0625, 0.0625, 0.0625])


def test_no_schedule_is_constant_and_floor_applies():
    assert [lr_at(0.1, s, 0, 0, 0) for s in (1, 5, 100)] == [0.1, 0.1, 0.1]
    assert lr_at(1e-6, 99, 0, 0, 100) == pytest.approx(1e-7)  # 1e-6 * (1/100)^2 -> floor
    assert lr_at(1e-4, 5, 0, 0, 3) == pytest.approx(1e-4 / 9)  # frozen at step 2


def test_decay_before_warmup_is_an_error():
    with pytest.raises(ValueError, match="warmup must finish before the decay starts"):
        lr_at(0.1, 1, 5, 2, 3)


@pytest.mark.parametrize("args", [(0, 0, 0), (3, 3, 5), (4, 7, 3), (0, 2, 6), (1, 5, 2), (5, 5, 0)])
def test_matches_the_oracle_scheduler(args):
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr=0.3)
    sched = OracleLRPolicy(opt, *args)
    ours = LRPolicy(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3), *args)
    for step in range(1, 16):
        assert ours.set_step(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
