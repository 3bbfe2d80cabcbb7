"""What can stop a run midway, turned into one line: a peer rank that died or stalled,
a loss that is no longer finite, a sparse id outside its table, no data at all.

Why our own: gloo and FBGEMM report these deep in C++ (a timeout naming a socket, a
bounds check that zeroes the row or aborts the process), and a rank waiting in a
collective cannot tell which step or phase it was in. The trainer tells `waiting_for`
what it is doing; `peer_failure_line` names it when a collective fails.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from dlrm_dist.config import ConfigError

_doing = "the process group to start"
_step = 0  # the step being trained, for errors raised deep in the model
# what gloo / nccl / the TCP store say when a peer died (connection gone) or stalled
# (the collective's timeout); torch raises them as RuntimeError or its subclasses
_PEER_FAILURE = re.compile(
    r"timed out|timeout|connection (closed|reset|refused)|broken pipe|"
    r"socket closed|peer|recv.*failed|send.*failed|ECONNRESET|EPIPE",
    re.IGNORECASE,
)


class TrainingError(ConfigError):
    """Training cannot go on (a non-finite loss, a bad batch); the message names the step
    and what to change. Raised before the state is checkpointed, so the newest checkpoint
    is the last good one. `one_rank`: raised only on the rank that saw it."""

    one_rank = False


class DataError(TrainingError):
    """A batch this rank read is wrong (an id outside its table); the other ranks did not
    see it."""

    one_rank = True


def waiting_for(what: str, step: int | None = None) -> None:
    """Record what this rank is about to wait on (and the step it trains), for
    `peer_failure_line` and `output_failure_line`."""
    global _doing, _step
    _doing = what
    if step is not None:
        _step = step


def is_output_failure(exc: BaseException) -> bool:
    """BCE's own check: the model's output left [0, 1], i.e. it is NaN (weights diverged)."""
    return isinstance(exc, RuntimeError) and "should be between 0 and 1" in str(exc)


def output_failure_line() -> str:
    return (
        f"ERROR: the model's output is NaN at step {_step}: training stopped, nothing of this "
        "step was saved; lower --learning-rate, then resume from the last checkpoint "
        "(--resume=auto)"
    )


def is_peer_failure(exc: BaseException) -> bool:
    """A collective or the store failed because another rank died or stalled."""
    dist_errors = tuple(
        getattr(torch.distributed, name)
        for name in ("DistError", "DistBackendError", "DistNetworkError", "DistStoreError")
        if hasattr(torch.distributed, name)
    )
    if isinstance(exc, dist_errors):
        return True
    return isinstance(exc, RuntimeError) and bool(_PEER_FAILURE.search(str(exc)))


def peer_failure_line(rank: int, timeout_s: float, exc: BaseException | None = None) -> str:
    """One line; the backend's own words (first line, shortened) at the end."""
    cause = str(exc).strip().splitlines()[0][-200:] if exc is not None and str(exc) else ""
    return (
        f"ERROR: rank {rank}: timed out after {timeout_s:g}s waiting for {_doing} (a peer "
        "rank died or stalled); see the other ranks' output, then rerun with --resume=auto "
        "(raise --dist-timeout if a rank is only slow)" + (f" [{cause}]" if cause else "")
    )


def check_loss(loss: float, step: int) -> None:
    """Stop at the first step whose (global) loss is NaN or Inf: every rank sees the same
    all-reduced value, so all stop together, before this state is saved."""
    if not np.isfinite(loss):
        raise TrainingError(
            f"the loss is {loss} at step {step}: training stopped, nothing of this step "
            "was saved; check the inputs for NaN/Inf and lower --learning-rate, then "
            "resume from the last checkpoint (--resume=auto)"
        )


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
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))[keep]
        ids = kjt.values().cpu().numpy()
        low, high = np.minimum.reduceat(ids, starts), np.maximum.reduceat(ids, starts)
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


def no_data(what: str) -> ConfigError:
    return ConfigError(
        f"no data to train on: {what}; check --data-size / --num-batches or the data files"
    )
