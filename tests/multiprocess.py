"""Run a function in N real processes (torch.distributed.elastic, as torchrun does) and
collect each rank's return value. Used by the distributed tests; gloo on CPU."""

from __future__ import annotations

import uuid
from typing import Any

from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from tests.common import free_port


def launch(world_size: int, fn, *args: Any) -> dict[int, Any]:
    """fn(*args) on ranks 0..world_size-1 (one node); returns {rank: return value}.
    fn must be importable (module level). A hang is caught by the test's timeout."""
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=world_size,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    return elastic_launch(config, fn)(*args)


def train_entry(argv: list[str]) -> dict[str, Any]:
    """One rank of `python -m dlrm_dist.train argv`: its losses and (rank 0) weights."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from dlrm_dist.cli import parse_args
    from dlrm_dist.train import run

    result = run(parse_args(argv))
    return {
        "losses": result.losses,
        "evals": result.evals,
        "weights": result.final_weights,
        "samples": result.samples,
        "pipelined": result.pipelined,
    }


def train_many(argvs: list[list[str]]) -> list[dict[str, Any]]:
    """train_entry for several runs in a row, in the same processes and process group
    (saves start-ups; a group is not re-initialized in one process)."""
    from dlrm_dist import distributed

    distributed.init_distributed()
    try:
        return [train_entry(argv) for argv in argvs]
    finally:
        distributed.close_distributed()


def agree_entry(offers: list[int]) -> int:
    """Rank r offers offers[r] batches; returns what all ranks agreed on."""
    import os

    from dlrm_dist import distributed

    env = distributed.init_distributed()
    try:
        return distributed.agree_num_batches(offers[int(os.environ["RANK"])])
    finally:
        distributed.close_distributed()
        assert env.world_size == len(offers)
