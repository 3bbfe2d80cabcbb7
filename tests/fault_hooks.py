"""Make one rank fail at a chosen step, the ways a node or its data fails. Tests only.

    DLRM_TEST_FAULT=ACTION:RANK:STEP python -m tests.fault_hooks FLAGS...
    DLRM_TEST_FAULT=ACTION:RANK:STEP torchrun ... -m tests.fault_hooks FLAGS...

ACTION, on rank RANK once step STEP has trained (before its checkpoint):
  kill   SIGKILL itself (a lost node: no exception, no cleanup)
  exit   exit at once with status 1, sockets closed (a crashed process)
  stall  sleep for an hour (a hung node: its peers wait in a collective)
and on the batch of step STEP, before the trainer's checks see it:
  nan    a NaN in the dense features
  inf    an Inf in the dense features
  badid  the first id of the first feature set to that table's row count (one past the end)
and on the loss of step STEP:
  nanloss  the (global) loss reported as NaN (a diverged model)

Only on torchrun's first attempt (TORCHELASTIC_RESTART_COUNT unset or 0), so the restarted
group trains through. With DLRM_TEST_FAULT_MARK=FILE the time the fault fired is written
to FILE first.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

PROCESS_FAULTS = ("kill", "exit", "stall")
BATCH_FAULTS = ("nan", "inf", "badid")
LOSS_FAULTS = ("nanloss",)


def _fire(action: str) -> None:
    mark = os.environ.get("DLRM_TEST_FAULT_MARK")
    if mark:
        with open(mark, "w") as f:
            f.write(repr(time.time()))
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "exit":
        sys.stderr.flush()
        os._exit(1)
    elif action == "stall":
        time.sleep(3600)


def _spoil(batch: Any, action: str, rows: dict[str, int]) -> None:
    if action in ("nan", "inf"):
        batch.dense_features[0, 0] = float(action)
    else:
        kjt = batch.sparse_features
        kjt.values()[0] = rows[kjt.keys()[0]]


def arm(action: str, rank: int, step: int, setattr: Callable = setattr) -> None:
    """Make this process fail as ACTION at `step` if it is `rank` (first attempt only).
    `setattr`: pytest's monkeypatch.setattr, to undo it after an in-process test."""
    if int(os.environ.get("RANK", "0")) != rank:
        return
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return
    from dlrm_dist import checkpoint, failures
    from dlrm_dist.data import batch_check

    if action in LOSS_FAULTS:
        check_loss = failures.check_loss

        def nan_at_step(loss, at):
            return check_loss(float("nan") if at == step else loss, at)

        setattr(failures, "check_loss", nan_at_step)
        return
    if action in PROCESS_FAULTS:
        save = checkpoint.CheckpointManager.save

        def fail_then_save(self, state, last=False):
            if state.step >= step:
                _fire(action)
            return save(self, state, last)

        setattr(checkpoint.CheckpointManager, "save", fail_then_save)
        return
    if action not in BATCH_FAULTS:
        raise ValueError(f"unknown fault {action}")
    check = batch_check.BatchCheck.__call__

    def spoil_then_check(self, batch):
        if self.step + 1 == step:
            _spoil(batch, action, self.rows)
        return check(self, batch)

    setattr(batch_check.BatchCheck, "__call__", spoil_then_check)


def arm_from_env() -> None:
    fault = os.environ.get("DLRM_TEST_FAULT", "")
    if fault:
        action, rank, step = fault.split(":")
        arm(action, int(rank), int(step))


if __name__ == "__main__":
    arm_from_env()
    from dlrm_dist.train import exit_with, main

    exit_with(main(sys.argv[1:]))
