"""random-fast drawn on CUDA equals numpy's draws."""

from __future__ import annotations

import pytest
import torch

from dlrm_dist.data.random_fast import RandomFastData, draw_slice
from dlrm_dist.data.random_fast_torch import TorchRandomFastData, draw_slice_torch
from tests.unit.test_random_fast_torch import SPECS, assert_equal, assert_same_batches


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_equal_the_numpy_draws():
    cuda = torch.device("cuda")
    for name, spec in SPECS.items():
        for exact in (True, False):
            ours = draw_slice_torch(spec, 4, 1, 3, 0, 4096, cuda, exact=exact)
            assert ours.values.device.type == "cuda", name
            assert_equal(ours, draw_slice(spec, 4, 1, 3, 0, 4096))
    spec = SPECS["uniform-random-bags"]
    args = (spec, 9, 0, 16, 1, 2, 44, 0)
    data = TorchRandomFastData(*args, device=cuda)
    assert next(iter(data)).sparse_features.values().device.type == "cuda"
    assert_same_batches(data, RandomFastData(*args))
