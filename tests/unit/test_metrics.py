"""Metrics settings without a run: profiling needs a run directory."""

from __future__ import annotations

import pytest

from dlrm_dist.cli import parse_args
from dlrm_dist.errors import ConfigError

ARGV = [
    "--arch-embedding-size=100-200-300",
    "--arch-sparse-feature-size=4",
    "--arch-mlp-bot=13-8-4",
    "--mini-batch-size=32",
    "--num-batches=12",
    "--data-generation=random-fast",
    "--loss-function=bce",
    "--round-targets=true",
    "--learning-rate=0.2",
    "--lr-num-warmup-steps=4",
    "--lr-decay-start-step=4",
    "--print-freq=4",
    "--test-freq=6",
    "--progress-bar=false",
]


def test_profiling_needs_a_run_dir():
    with pytest.raises(ConfigError, match="--enable-profiling needs --run-dir"):
        parse_args([*ARGV, "--enable-profiling"])
