"""EpochBatches hands each batch over on the training device, moving only what is not."""

from __future__ import annotations

import numpy as np
import torch

from dlrm_dist.data.batch_source import RawBatch, to_batch
from dlrm_dist.data.sources import EpochBatches, on_device


def _batch():
    raw = RawBatch(
        dense=np.arange(6, dtype=np.float32).reshape(3, 2),
        lengths=np.array([[1, 2, 0], [1, 1, 1]], dtype=np.int64),  # (F, B)
        values=np.array([0, 1, 2, 3, 4, 5], dtype=np.int64),
        targets=np.array([[0.0], [1.0], [0.0]], dtype=np.float32),
    )
    return to_batch(raw, ["a", "b"])


def test_a_batch_already_on_the_device_is_handed_over_as_it_is():
    batch = _batch()
    assert on_device(batch, torch.device("cpu"))
    (out,) = EpochBatches([batch], 1, 1, torch.device("cpu"))
    assert out is batch


def test_a_batch_elsewhere_is_moved_whole():
    batch = _batch()
    meta = torch.device("meta")
    assert not on_device(batch, meta)
    (out,) = EpochBatches([batch], 1, 1, meta)
    kjt = out.sparse_features
    for t in (out.dense_features, out.labels, kjt.values(), kjt.lengths()):
        assert t.device == meta
    assert kjt.keys() == ["a", "b"] and kjt.stride() == 3


def test_one_tensor_elsewhere_is_enough_to_move_the_batch():
    batch = _batch()
    batch.labels = batch.labels.to("meta")
    assert not on_device(batch, torch.device("cpu"))
