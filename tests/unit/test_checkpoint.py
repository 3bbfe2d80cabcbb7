"""Checkpoints without a run: the config a checkpoint saves reads back as the same config."""

from __future__ import annotations

import tomllib

from dlrm_dist.cli import parse_args
from dlrm_dist.config import Config, apply_overrides, to_toml
from tests.common import TINY_JOB

BASE = TINY_JOB


# the reference's stream: evaluation (every 3 steps) draws from it between train batches
REFERENCE = [*BASE, "--data-generation=random", "--sharding-type=table_wise", "--test-freq=3"]


def test_the_saved_config_reads_back_as_the_same_config():
    cfg = parse_args(
        [*REFERENCE, "--loss-weights=0.5-2.0", '--checkpoint-dir=c d/"q"', "--resume=auto"]
    )
    cfg.sharding.tables = {"t_cat_0": {"sharding_type": "column_wise"}}
    assert apply_overrides(Config(), tomllib.loads(to_toml(cfg))) == cfg
