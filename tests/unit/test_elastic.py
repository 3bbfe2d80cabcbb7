"""Elastic starts without processes: the store prefix a start's ranks agree on (threads
over one in-memory store, with an earlier start's keys left in it), what a start is from
torchrun's environment, its first line, the hint for a batch a world cannot split."""

from __future__ import annotations

import datetime
import threading
import time

import pytest
import torch.distributed as dist

from dlrm_dist import distributed, elastic
from dlrm_dist.errors import ConfigError, PeerFailureError


def _start_ranks(store, world: int, delays: dict[int, float], timeout_s: float = 10.0):
    """attempt_prefix on ranks 0..world-1 in threads (rank r starts after delays[r] s);
    returns {rank: prefix or the exception it raised}."""
    out: dict[int, object] = {}

    def rank(r: int) -> None:
        time.sleep(delays.get(r, 0.0))
        try:
            out[r] = elastic.attempt_prefix(store, r, world, timeout_s)
        except Exception as exc:
            out[r] = exc

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def test_every_rank_of_a_start_gets_the_same_fresh_prefix_whoever_comes_first():
    store = dist.HashStore()
    store.set_timeout(datetime.timedelta(seconds=10))
    starts = [
        _start_ranks(store, 3, {0: 0.2}),  # the others ask before rank 0 exists
        _start_ranks(store, 3, {1: 0.2, 2: 0.3}),  # rank 0 reads the last start's nonces
        _start_ranks(store, 3, {0: 0.2}),  # the last start's answers are all in the store
    ]
    for got in starts:
        assert len(set(got.values())) == 1, got
        (prefix,) = set(got.values())
        assert isinstance(prefix, str) and prefix.startswith(elastic.ROOT)
    assert len({got[0] for got in starts}) == 3  # never an earlier start's prefix


def test_a_start_with_fewer_ranks_after_a_lost_node_meets_alone_and_fresh():
    store = dist.HashStore()
    store.set_timeout(datetime.timedelta(seconds=10))
    two = _start_ranks(store, 2, {})
    one = _start_ranks(store, 1, {})
    three = _start_ranks(store, 3, {0: 0.1})  # a node came back, plus one
    assert len(set(two.values())) == 1 and len(set(three.values())) == 1
    assert len({two[0], one[0], three[0]}) == 3


def test_rank0_says_how_many_ranks_never_joined_within_the_timeout():
    store = dist.HashStore()
    store.set("dlrm_dist/starts/hello/1", "a nonce of the start before")
    started = time.monotonic()
    with pytest.raises(PeerFailureError, match="only 0 of the other 2 rank"):
        elastic.attempt_prefix(store, 0, 3, timeout_s=0.3)  # ranks 1 and 2 never come
    assert time.monotonic() - started < 5


def test_what_a_start_is_comes_from_torchruns_environment():
    env = {
        "TORCHELASTIC_RUN_ID": "job",
        "TORCHELASTIC_RESTART_COUNT": "2",
        "TORCHELASTIC_MAX_RESTARTS": "3",
        "GROUP_WORLD_SIZE": "1",
    }
    start = elastic.Start.from_env(env)
    assert start == elastic.Start(True, 2, 3, 1)
    assert elastic.Start.from_env({}) == elastic.Start(False, 0, 0, 1)
    line = elastic.start_line(
        start, 1, 32, "resuming from ckpt/step-60 (step 60, saved by 2 rank(s))"
    )
    assert line == (
        "dlrm_dist: restart 2 (of at most 3 on this node): world size 1 on 1 node(s), "
        "local batch 32 of the global 32; resuming from ckpt/step-60 (step 60, saved by 2 rank(s))"
    )
    first = elastic.start_line(elastic.Start(True, 0, 0, 2), 4, 32, "starting fresh")
    assert first == (
        "dlrm_dist: start: world size 4 on 2 node(s), local batch 8 of the global 32; "
        "starting fresh"
    )


def test_a_batch_an_elastic_world_cannot_split_says_what_to_change(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    env = distributed.DistEnv(0, 3, 0, 2, None, "gloo")
    with pytest.raises(ConfigError) as err:
        distributed.local_batch(16, env)
    assert str(err.value) == (
        "--mini-batch-size=16 is not divisible by the world size 3: use a multiple of 3 "
        "(this start formed 2 node(s); an elastic job, --nnodes MIN:MAX, needs a batch that "
        "every world size it can form divides)"
    )


def test_the_torchx_component_makes_an_elastic_job_of_min_max_nodes():
    from launch.components import CHECKPOINT_MOUNT, train

    app = train(
        "--num-batches=10",
        j="1:4x8",
        gpu=8,
        max_restarts=3,
        rdzv_conf="last_call_timeout=5,keep_alive_interval=2",
        checkpoint_dir="/mnt/ckpt",
    )
    (role,) = app.roles
    cmd = role.args[1]
    assert cmd.startswith(
        "torchrun --max_restarts 3 --rdzv_conf last_call_timeout=5,keep_alive_interval=2 "
        "--rdzv_backend c10d "
    )
    assert "--nnodes 1:4 --nproc_per_node 8" in cmd
    assert cmd.endswith(f"--checkpoint-dir {CHECKPOINT_MOUNT} --resume auto --num-batches=10")
    assert (role.min_replicas, role.num_replicas) == (1, 4)
    assert role.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    fixed = train(j="2x8", checkpoint_dir="/mnt/ckpt").roles[0]
    assert "--max_restarts" not in fixed.args[1] and "--resume" not in fixed.args[1]
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in fixed.env
