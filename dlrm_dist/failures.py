"""What can stop a run midway, turned into one line: a peer rank that died or stalled,
a model output or loss that is no longer finite, no data at all. (A bad batch is caught
before the model sees it: `data.batch_check`.)

Why our own: gloo and FBGEMM report these deep in C++ (a timeout naming a socket, a
bounds check that zeroes the row or aborts the process), and a rank waiting in a
collective cannot tell which step or phase it was in. The trainer tells its `Phase` what
it is doing; `translate` names it when a collective fails.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from dlrm_dist.errors import ConfigError, PeerFailureError, TrainingError

# what gloo / nccl / the TCP store say when a peer died (connection gone) or stalled
# (the collective's timeout); torch raises them as RuntimeError or its subclasses
_PEER_FAILURE = re.compile(
    r"timed out|timeout|connection (closed|reset|refused)|broken pipe|"
    r"socket closed|peer|recv.*failed|send.*failed|ECONNRESET|EPIPE",
    re.IGNORECASE,
)


class Phase:
    """What this rank is doing (and the step it trains): what a failed collective was
    waiting for, and the step a failure deep in the model happened at."""

    def __init__(self, doing: str = "the process group to start") -> None:
        self.doing, self.step = doing, 0

    def enter(self, doing: str, step: int | None = None) -> None:
        self.doing = doing
        if step is not None:
            self.step = step


def translate(exc: BaseException, phase: Phase, rank: int, timeout_s: float):
    """The one-line project error for a failure torch raised, or None when it is none of
    ours: the model's output NaN (BCE's own check), or a peer that died or stalled."""
    if is_output_failure(exc):
        return TrainingError(output_failure_line(phase.step), one_rank=True)
    if is_peer_failure(exc):
        return PeerFailureError(peer_failure_line(rank, timeout_s, phase.doing, exc))
    return None


def is_output_failure(exc: BaseException) -> bool:
    """BCE's own check: the model's output left [0, 1], i.e. it is NaN (weights diverged)."""
    return isinstance(exc, RuntimeError) and "should be between 0 and 1" in str(exc)


def output_failure_line(step: int) -> str:
    return (
        f"the model's output is NaN at step {step}: training stopped, nothing of this "
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


def peer_failure_line(
    rank: int, timeout_s: float, doing: str, exc: BaseException | None = None
) -> str:
    """One line; the backend's own words (first line, shortened) at the end."""
    cause = str(exc).strip().splitlines()[0][-200:] if exc is not None and str(exc) else ""
    return (
        f"rank {rank}: timed out after {timeout_s:g}s waiting for {doing} (a peer "
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


def no_data(what: str) -> ConfigError:
    return ConfigError(
        f"no data to train on: {what}; check --data-size / --num-batches or the data files"
    )
