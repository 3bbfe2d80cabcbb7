"""The trainer's configs without a run: the shipped configs parse, refused combinations."""

from __future__ import annotations

import pytest

from dlrm_dist.arch import (
    derive_arch,
)
from dlrm_dist.cli import parse_args
from dlrm_dist.errors import ConfigError
from tests.common import ROOT


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.toml")))
def test_shipped_configs_parse(name):
    cfg = parse_args(["--config", str(ROOT / "configs" / name)])
    derive_arch(cfg.model, cfg.data.dense_features)


def test_sharded_weight_init_refuses_tables_the_reference_draws_itself():
    with pytest.raises(ConfigError, match="--weight-init=sharded covers plain tables only"):
        parse_args(["--weight-init=sharded", "--qr-flag"])
