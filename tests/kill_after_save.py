"""Crash the trainer with SIGKILL at a checkpoint, the way a lost node stops it: no
exception, no cleanup, no flush. Tests only.

    python -m tests.kill_after_save STEP FLAGS...          dies right after step-STEP
    python -m tests.kill_after_save --before STEP FLAGS... dies with every rank's shards
                                                           of step-STEP written, before
                                                           the checkpoint is published
                                                           (in the background writer,
                                                           with --async-checkpoint)
Under tests.multiprocess.launch, `train_then_die` arms every rank the same way.
"""

from __future__ import annotations

import os
import signal
import sys


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(step: int, before_publish: bool = False) -> None:
    """Make this process SIGKILL itself at the save of `step` (or any later save)."""
    from dlrm_dist import checkpoint

    manager = checkpoint.CheckpointManager
    if before_publish:
        publish = manager._publish

        def publish_or_die(self, state, tmp, final, files):
            if state.step >= step:
                _die()
            return publish(self, state, tmp, final, files)

        manager._publish = publish_or_die
        return
    save = manager.save

    def save_then_die(self, state, last=False):
        path = save(self, state, last)
        if path is not None and state.step >= step:
            self.wait()  # a save in the background: once it is published
            _die()
        return path

    manager.save = save_then_die


def train_then_die(step: int, argv: list[str]) -> None:
    """One rank under tests.multiprocess.launch: train with argv, die at step's save."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from dlrm_dist.cli import parse_args
    from dlrm_dist.train import run

    arm(step)
    run(parse_args(argv))


if __name__ == "__main__":
    args = sys.argv[1:]
    before = args[0] == "--before"
    if before:
        args = args[1:]
    arm(int(args[0]), before)
    from dlrm_dist.train import main

    sys.exit(main(args[1:]))
