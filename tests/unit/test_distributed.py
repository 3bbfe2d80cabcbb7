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
