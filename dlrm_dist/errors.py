"""The project's errors: what a user can fix, as one line.

Library code raises these; only the command lines (`dlrm_dist.train`, `.plan`,
`.data.criteo`) turn them into `ERROR: <message>` and exit status 2. Every message says what
is wrong and what to change. Imports nothing, so every module can raise them.
"""

from __future__ import annotations


class DlrmDistError(Exception):
    """A user-fixable failure. `one_rank`: raised only on the rank that saw it (the CLI
    prints it there); otherwise every rank raises the same and rank 0 prints it.
    `exit_status`: what the CLI exits with."""

    one_rank = False
    exit_status = 2

    def __init__(self, *args: object, one_rank: bool | None = None) -> None:
        super().__init__(*args)
        if one_rank is not None:
            self.one_rank = one_rank


class ConfigError(DlrmDistError, ValueError):
    """A setting is wrong; the message says which and what to change."""


class CheckpointError(DlrmDistError):
    """A checkpoint is missing, damaged, or does not fit this run; or a save failed.
    The message names the file or tensors and what to do. No checkpoint was changed."""


class TrainingError(DlrmDistError):
    """Training cannot go on (a non-finite loss, a bad batch); the message names the step
    and what to change. Raised before the state is checkpointed, so the newest checkpoint
    is the last good one."""


class DataError(TrainingError):
    """A batch this rank read is wrong (an id outside its table); the other ranks did not
    see it."""

    one_rank = True


class PeerFailureError(DlrmDistError):
    """A collective failed because another rank died or stalled; the message says what this
    rank was waiting for. Each rank says it for itself; exit status 3."""

    one_rank = True
    exit_status = 3
