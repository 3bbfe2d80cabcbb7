"""Each optimizer's update against a plain-PyTorch computation of the reference's
definition (tests/oracle.py): torch's SGD and Adagrad on sparse table gradients, the
reference's row-wise sparse Adagrad, and lazy Adam (SparseAdam on tables, Adam on MLPs)."""

from __future__ import annotations

import numpy as np
import pytest

from dlrm_dist.arch import derive_arch, parameter_order, table_parameter_names
from dlrm_dist.cli import parse_args
from dlrm_dist.errors import ConfigError
from dlrm_dist.train import run
from tests.oracle import oracle_kwargs, oracle_train

TINY = [
    "--arch-embedding-size=20-30-40",
    "--arch-mlp-bot=5-8-4",
    "--arch-mlp-top=6-1",
    "--mini-batch-size=16",
    "--num-batches=20",
    "--num-indices-per-lookup=4",
    "--print-freq=1000",
    "--progress-bar=false",
]


def _compare(argv: list[str]) -> None:
    cfg = parse_args(argv)
    ours = run(cfg)
    want = oracle_train(**oracle_kwargs(cfg))
    np.testing.assert_allclose(ours.losses, want["losses"], rtol=1e-5, atol=1e-7)
    arch = derive_arch(cfg.model)
    names = parameter_order(arch)
    for name, value in zip(names, want["params"], strict=True):
        np.testing.assert_allclose(ours.final_weights[name], value, rtol=1e-4, atol=1e-6)
    # the update moved every table: the check is not vacuous
    for name, value in zip(names, want["init_params"], strict=True):
        if name in table_parameter_names(arch):
            assert not np.allclose(ours.final_weights[name], value)


def _fused(optimizer: str) -> list[str]:
    # dim 4: FBGEMM's fused kernels, sharded table-wise; learning rate with warmup + decay
    return [
        *TINY,
        "--arch-sparse-feature-size=4",
        f"--optimizer={optimizer}",
        "--learning-rate=0.05",
        "--sharding-type=table_wise",
        "--lr-num-warmup-steps=4",
        "--lr-decay-start-step=8",
        "--lr-num-decay-steps=10",
    ]


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rwsadagrad"])
def test_fused_embedding_optimizers_match_the_reference_update(optimizer):
    _compare(_fused(optimizer))


def test_adam_on_cpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="no fused Adam on CPU"):
        run(parse_args(_fused("adam")))


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rwsadagrad"])
def test_data_parallel_tables_take_the_same_update(optimizer):
    # dim 2: torchrec's dense kernel, replicated; zero rows leave these optimizers' state
    # unchanged, so the dense update equals the sparse one
    _compare(
        [
            *TINY,
            "--arch-mlp-bot=5-8-2",
            "--arch-sparse-feature-size=2",
            f"--optimizer={optimizer}",
            "--learning-rate=0.05",
        ]
    )
