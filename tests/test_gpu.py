"""CUDA paths, run where a GPU is present (marked `gpu`, skipped elsewhere): the
sharding types that need CUDA, nccl and the pipeline on CUDA streams train like the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlrm_dist.cli import parse_args
from dlrm_dist.train import run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

BASE = [
    "--arch-embedding-size=200-300-400-500",
    "--arch-sparse-feature-size=8",
    "--arch-mlp-bot=5-16-8",
    "--arch-mlp-top=16-1",
    "--loss-function=bce",
    "--round-targets=true",
    "--mini-batch-size=64",
    "--num-batches=20",
    "--data-generation=random-fast",
    "--optimizer=adagrad",
    "--learning-rate=0.05",
    "--print-freq=1000",
    "--progress-bar=false",
]


@pytest.mark.parametrize("sharding", ["table_wise", "row_wise", "table_row_wise", "column_wise"])
def test_cuda_sharding_trains_like_the_cpu(sharding):
    cpu = run(parse_args([*BASE, "--sharding-type=table_wise"]))
    gpu = run(parse_args([*BASE, "--use-gpu", f"--sharding-type={sharding}"]))
    assert gpu.pipelined  # random-fast on CUDA goes through TrainPipelineSparseDist
    np.testing.assert_allclose(gpu.losses, cpu.losses, rtol=1e-4, atol=1e-6)
    for name, want in cpu.final_weights.items():
        np.testing.assert_allclose(gpu.final_weights[name], want, rtol=1e-3, atol=1e-5)
