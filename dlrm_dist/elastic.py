"""Elastic runs under torchrun: which start of the job this is, the store prefix its ranks
agree on, and the first line it prints.

With `torchrun --nnodes=MIN:MAX --max-restarts=N`, a lost node makes the survivors' agents
stop their workers and meet again at a smaller world size; a node that comes back (or is
added) makes them meet again at a larger one. Each start is a new set of worker processes
that resume from the newest checkpoint (`--resume auto`; DCP reshards onto the new world).

Why the prefix is our own: every start's ranks meet in the store of the agent that holds
rendezvous rank 0, which outlives the starts, so the keys of the start before (the dead
ranks' gloo addresses among them) are still there, and a process group that reads them
dials ranks that are gone. torchrun's TORCHELASTIC_RESTART_COUNT cannot tell starts apart:
each agent counts its own restarts, a node that joins at a restart starts at 0, and a
restart for a node that joins counts as none. So rank 0 of each start draws a fresh token
and hands it to every other rank in answer to a nonce that rank drew itself: no rank can
take the token of an earlier start, and the process group meets under it.

Only store calls (set, get, check, add, multi_get, wait) are made here, on the store
`distributed.init_distributed` passes in; this module imports no process-group code.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from dlrm_dist.errors import PeerFailureError

ROOT = "dlrm_dist/starts/"


def attempt_prefix(store, rank: int, world_size: int, timeout_s: float) -> str:
    """The store prefix this start's ranks agree on, fresh at every start (see the module
    docstring). Every rank of the start calls it once, before its process group exists.

    Rank 0 waits up to timeout_s for the others (a PeerFailureError naming the missing
    ranks); the others wait as long as the store's own timeout for rank 0's answer."""
    if world_size == 1:
        return f"{ROOT}{uuid.uuid4().hex}/"
    if rank == 0:
        token = uuid.uuid4().hex
        _welcome(store, token, world_size, time.monotonic() + timeout_s)
    else:
        nonce = uuid.uuid4().hex
        store.set(f"{ROOT}hello/{rank}", nonce)
        token = store.get(f"{ROOT}welcome/{nonce}").decode()  # blocks until rank 0 answers
        store.add(f"{ROOT}joined/{token}", 1)
    return f"{ROOT}{token}/"


def _welcome(store, token: str, world_size: int, deadline: float) -> None:
    """Rank 0: answer every rank's newest nonce with the token until all have joined. A
    nonce read early may be the previous start's (its key is overwritten once that rank
    of this start says hello), so the nonces are read again until every rank joined."""
    hellos = [f"{ROOT}hello/{r}" for r in range(1, world_size)]
    answered: set[bytes] = set()
    pause = 0.002
    while True:
        if store.check(hellos):  # every rank has said hello, in this start or the last
            for nonce in store.multi_get(hellos):
                if nonce not in answered:
                    store.set(f"{ROOT}welcome/{nonce.decode()}", token)
                    answered.add(nonce)
        joined = store.add(f"{ROOT}joined/{token}", 0)
        if joined == world_size - 1:
            return
        if time.monotonic() > deadline:
            raise PeerFailureError(
                f"rank 0: only {joined} of the other {world_size - 1} rank(s) of this start "
                "joined within --dist-timeout (a node was lost while the job restarted); "
                "torchrun restarts the group again if it has restarts left"
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


@dataclass(frozen=True)
class Start:
    """What torchrun tells a worker about this start of the job (its environment)."""

    under_torchrun: bool  # TORCHELASTIC_RUN_ID is set
    restart: int  # this node's agent's restart count (a joining node counts from 0)
    max_restarts: int
    nodes: int  # the nodes (agents) this start's rendezvous formed

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Start:
        return cls(
            under_torchrun="TORCHELASTIC_RUN_ID" in environ,
            restart=int(environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            max_restarts=int(environ.get("TORCHELASTIC_MAX_RESTARTS", "0")),
            nodes=int(environ.get("GROUP_WORLD_SIZE", "1")),
        )


def start_line(start: Start, world_size: int, global_batch: int, resume: str) -> str:
    """The first line of every start under torchrun: after a restart it says at once at
    which world size the job goes on, each rank's share of the (unchanged) global batch and
    where training resumes. resume: `checkpoint.describe_resume`'s words."""
    which = "start"
    if start.restart:
        which = f"restart {start.restart} (of at most {start.max_restarts} on this node)"
    return (
        f"dlrm_dist: {which}: world size {world_size} on {start.nodes} node(s), local batch "
        f"{global_batch // world_size} of the global {global_batch}; {resume}"
    )


def batch_split_hint(world_size: int, start: Start) -> str:
    """What to change when the global batch does not split over this start's world size;
    for an elastic job, the world size may be another at the next restart."""
    hint = f"use a multiple of {world_size}"
    if start.under_torchrun:
        hint += (
            f" (this start formed {start.nodes} node(s); an elastic job, --nnodes MIN:MAX, "
            "needs a batch that every world size it can form divides)"
        )
    return hint
