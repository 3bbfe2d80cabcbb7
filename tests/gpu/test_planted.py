"""Planted labels drawn on CUDA equal numpy's."""

from __future__ import annotations

import pytest
import torch

from dlrm_dist.data.random_fast import draw_slice
from dlrm_dist.data.random_fast_torch import draw_slice_torch
from tests.unit.test_planted import SPECS, assert_same


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_labels_equal_numpy_labels():
    for name, spec in SPECS.items():
        ours = draw_slice_torch(spec, 5, 1, 2, 0, 65536, "cuda")
        assert ours.targets.device.type == "cuda", name
        assert_same(ours.numpy(), draw_slice(spec, 5, 1, 2, 0, 65536))
