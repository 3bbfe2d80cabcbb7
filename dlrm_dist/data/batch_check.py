"""The per-batch check before the model sees a batch: finite dense features, every sparse
id inside its table. Its error names the step, the feature and the fix."""

from __future__ import annotations

import numpy as np
import torch

from dlrm_dist.errors import DataError


class BatchCheck:
    """Finite dense features, and every sparse id in [0, rows) of its table, checked per
    batch before the model sees it (FBGEMM's CPU kernels would read out of bounds or zero
    the row silently). Costs an isfinite and one min and one max reduction over all ids
    (per feature segment, vectorized), per batch."""

    def __init__(self, features: list[str], rows: tuple[int, ...], first_step: int) -> None:
        self.rows = dict(zip(features, rows))
        self.step = first_step  # the step that trains the next batch
        self._keys: tuple[str, ...] = ()
        self._rows = np.zeros(0, dtype=np.int64)

    def __call__(self, batch) -> None:
        self.step += 1
        if not bool(torch.isfinite(batch.dense_features).all()):
            bad = batch.dense_features[~torch.isfinite(batch.dense_features)][0].item()
            raise DataError(
                f"the dense features of the batch of step {self.step} hold {bad}: training "
                "stopped before it, nothing of it was saved; fix the data (Criteo: "
                "preprocess again), then resume from the last checkpoint (--resume=auto)"
            )
        kjt = batch.sparse_features
        keys = tuple(kjt.keys())
        if keys != self._keys:  # the tables' row counts in the batch's key order, once
            big = np.iinfo(np.int64).max
            self._keys, self._rows = keys, np.array([self.rows.get(k, big) for k in keys])
        lengths = np.asarray(kjt.length_per_key())
        keep = lengths > 0
        if not keep.any():
            return
        low, high = _segment_min_max(kjt.values(), lengths, keep)
        rows = self._rows[keep]
        bad = np.flatnonzero((low < 0) | (high >= rows))
        if bad.size:
            i = bad[0]
            key = np.asarray(keys)[keep][i]
            value = int(low[i]) if low[i] < 0 else int(high[i])
            raise DataError(
                f"sparse index {value} of feature {key} (table t_{key}, {int(rows[i])} rows) "
                f"is out of range in the batch of step {self.step}: ids must be in "
                f"[0, {int(rows[i])}); fix the data or --arch-embedding-size"
            )


def _segment_min_max(
    ids: torch.Tensor, lengths: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Min and max id (K,) of each non-empty feature segment (keep: lengths > 0) of the
    feature-major ids (N,). On a GPU reduced there (only 2K numbers cross to the host, not
    the N ids: 14M a step for MLPerf's batch); on the CPU with numpy's reduceat."""
    if ids.is_cuda:
        segment = torch.repeat_interleave(
            torch.arange(int(keep.sum()), device=ids.device),
            torch.as_tensor(lengths[keep], device=ids.device),
        )
        big = torch.iinfo(torch.int64).max
        low = torch.full((int(keep.sum()),), big, dtype=ids.dtype, device=ids.device)
        high = torch.full_like(low, -big - 1)
        low.scatter_reduce_(0, segment, ids, "amin")
        high.scatter_reduce_(0, segment, ids, "amax")
        return low.cpu().numpy(), high.cpu().numpy()
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))[keep]
    values = ids.numpy()
    return np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)
