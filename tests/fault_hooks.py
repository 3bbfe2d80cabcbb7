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
and on the background save of step STEP:
  slowsave  its shards written, the writer sleeps for an hour before it publishes (a save
            in flight while training goes on, for a kill to interrupt)

Only on torchrun's first attempt (TORCHELASTIC_RESTART_COUNT unset or 0), so the restarted
group trains through; ACTION:RANK:STEP:N: on the attempt whose restart count is N instead.
Several faults: separated by `;`. RANK `any`: whichever rank this process is (for a fault
given to one node's agent only). A process fault waits for a checkpoint still being
written in the background first, so the newest checkpoint at the fault is the one last
due. With DLRM_TEST_FAULT_MARK=FILE the time the (first) fault fired is written to FILE
first (the second's to FILE.1, ...), and a fault fires only while its file does not exist:
once per job, also when a restart for a node that joins leaves the restart count as it was.
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


def _fire(action: str, mark: str) -> None:
    if mark:
        with open(mark, "w") as f:
            f.write(repr(time.time()))
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "exit":
        sys.stderr.flush()
        os._exit(1)
    elif action in ("stall", "slowsave"):
        time.sleep(3600)


def _spoil(batch: Any, action: str, rows: dict[str, int]) -> None:
    if action in ("nan", "inf"):
        batch.dense_features[0, 0] = float(action)
    else:
        kjt = batch.sparse_features
        kjt.values()[0] = rows[kjt.keys()[0]]


def arm(
    action: str,
    rank: int | None,
    step: int,
    setattr: Callable = setattr,
    attempt: int = 0,
    mark: str | None = None,
) -> None:
    """Make this process fail as ACTION at `step` if it is `rank` (None: any), on the
    attempt whose restart count is `attempt`, once: while `mark` (default
    DLRM_TEST_FAULT_MARK) does not exist. `setattr`: pytest's monkeypatch.setattr, to undo
    it after an in-process test."""
    if rank is not None and int(os.environ.get("RANK", "0")) != rank:
        return
    mark = os.environ.get("DLRM_TEST_FAULT_MARK", "") if mark is None else mark
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) != attempt or (
        mark and os.path.exists(mark)
    ):
        return
    from dlrm_dist import checkpoint, failures
    from dlrm_dist.data import batch_check

    if action == "slowsave":
        publish = checkpoint.CheckpointManager._publish

        def publish_slowly(self, state, tmp, final, files):
            if state.step == step:
                _fire(action, mark)
            return publish(self, state, tmp, final, files)

        setattr(checkpoint.CheckpointManager, "_publish", publish_slowly)
        return

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
                self.wait()
                _fire(action, mark)
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
    """DLRM_TEST_FAULT: faults separated by `;`; the i-th (from 0) marks MARK, MARK.1, ..."""
    faults = [f for f in os.environ.get("DLRM_TEST_FAULT", "").split(";") if f]
    mark = os.environ.get("DLRM_TEST_FAULT_MARK", "")
    for i, fault in enumerate(faults):
        action, rank, step, *attempt = fault.split(":")
        arm(
            action,
            None if rank == "any" else int(rank),
            int(step),
            attempt=int(attempt[0]) if attempt else 0,
            mark=f"{mark}.{i}" if mark and i else mark,
        )


if __name__ == "__main__":
    arm_from_env()
    from dlrm_dist.train import exit_with, main

    exit_with(main(sys.argv[1:]))
