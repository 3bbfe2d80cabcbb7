"""Elastic world size, for real: torchrun agents on loopback as nodes (gloo, CPU), the
rendezvous store held by the test (an external store: losing the node that hosts a c10d
store would end the job). A node is lost the way a machine goes: its agent and every one
of its workers SIGKILLed at once (torchrun starts workers in sessions of their own, so a
process-group kill would leave them running). The survivor restarts at the smaller world
size, resumes resharded and trains what an uninterrupted run trains; a node added at a
restart makes the world larger; a save in flight interrupted by a kill leaves the previous
checkpoint the newest; a batch a world cannot split is one line.

Tolerance against an uninterrupted one-rank run: 1e-5 on losses and weights. A world
size change reorders float sums (DDP's mean of the ranks' MLP gradients against one
rank's, the embedding gradients divided by the world size, the loss as a mean of local
means), which moves values by ~1e-7 a step; the data, the global batch and the lr
(from the global step) are the same at any world size.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from dlrm_dist.checkpoint import list_checkpoints
from dlrm_dist.cli import parse_args
from dlrm_dist.train import run
from tests.common import ROOT, free_port, tiny_job

TORCHRUN = Path(sys.executable).parent / "torchrun"
# 6 batches x 2 epochs = 12 steps of a global batch of 16, 4 tables table-wise, a checkpoint
# every 4 steps; the node goes at step 6 (its in-flight save of step 4 published first)
TINY = tiny_job(data_generation="random-fast", sharding_type="table_wise", threads=1)
CKPT = ["--checkpoint-every=4", "--resume=auto", "--dist-timeout=30"]
# heartbeats every second, a node dead after 3 missed; 2 s for a second node to join a round
RDZV = "last_call_timeout=2,keep_alive_interval=1,keep_alive_max_attempt=3,join_timeout=120"
LOSS = re.compile(r"Finished training it (\d+)/6 of epoch (\d), .*?, loss (\d+\.\d+)")


class Node:
    """One torchrun agent (a node), in its own session, its output in DIR/NAME.log."""

    def __init__(
        self, d: Path, name: str, port: int, argv: list[str], fault: str = "", share=True
    ) -> None:
        """share=False: TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, each start's rank 0 worker
        hosts a fresh store (what lets a node join a running job: with the agent's shared
        store, torch 2.14's agents never tell a joining node where it is)."""
        self.log = d / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DLRM_TEST_", "PET_"))}
        env.pop("TORCHELASTIC_RESTART_COUNT", None)
        env |= {"PYTHONPATH": str(ROOT), "LOGLEVEL": "INFO"}
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "0" if share else "1"
        if fault:
            env |= {"DLRM_TEST_FAULT": fault, "DLRM_TEST_FAULT_MARK": str(d / "fired")}
        cmd = [str(TORCHRUN), "--nnodes=1:2", "--nproc-per-node=1"]
        # one rendezvous per job (its directory): a finished job's rendezvous is closed
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={d.name}"]
        cmd += [f"--rdzv-conf={RDZV}", "--max-restarts=3", "--monitor-interval=0.1"]
        cmd += ["-m", "tests.fault_hooks", *argv]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.ended: float | None = None  # when it exited (test clock)
        self.last: float | None = None  # when its log first showed the run's last step

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def descendants(self) -> list[int]:
        """The agent's workers (and theirs): by parent pid, read from /proc."""
        parent: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
        found, frontier = [], [self.proc.pid]
        while frontier:
            kids = [pid for pid, ppid in parent.items() if ppid in frontier]
            found += kids
            frontier = kids
        return found

    def lose(self) -> list[int]:
        """SIGKILL the agent and all its workers at once, as a lost machine; their pids."""
        pids = [self.proc.pid, *self.descendants()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        return pids

    def poll(self) -> int | None:
        rc = self.proc.poll()
        if rc is not None and self.ended is None:
            self.ended = time.monotonic()
        return rc

    def clean_up(self) -> None:
        if self.proc.poll() is None:
            self.lose()


def _wait_for(what, nodes: list[Node], timeout: float = 150, every: float = 0.05):
    """Poll until what() is true (its value returned); the nodes' logs if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            node.poll()
        value = what()
        if value:
            return value
        if all(node.ended is not None for node in nodes):
            break
        time.sleep(every)
    logs = "\n".join(f"--- {n.log.name}\n{n.text()[-4000:]}" for n in nodes)
    pytest.fail(f"timed out waiting or every node ended; the logs:\n{logs}")


def _losses(text: str) -> dict[int, float]:
    """Global step -> logged loss (6 decimals), from a log's training lines."""
    return {
        6 * int(epoch) + int(j): float(loss) for j, epoch, loss in LOSS.findall(text)
    }  # fmt: skip


def _final_tensors(directory: Path, out: Path) -> dict[str, torch.Tensor]:
    step, path = list_checkpoints(directory)[-1]
    assert step == 12
    dcp_to_torch_save(path, out)
    flat = torch.load(out, weights_only=True)  # checkpoint.py's names: model.<name>, ...
    return {k.removeprefix("model."): v for k, v in flat.items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def store_port():
    """The rendezvous store, held outside both nodes (as etcd would be)."""
    port = free_port()
    store = dist.TCPStore(
        "127.0.0.1", port, is_master=True, multi_tenant=True,
        timeout=datetime.timedelta(seconds=60),
    )  # fmt: skip
    yield port
    del store


@pytest.fixture(scope="module")
def straight():
    """The uninterrupted run on one rank: losses and final weights."""
    result = run(parse_args(TINY))
    assert len(result.losses) == 12
    return result


LAST_STEP = "Finished training it 6/6 of epoch 1"


def _until_exit(node: Node, after: str) -> None:
    """Poll until the node exits, noting when its log first showed the last step after
    the line `after` (a start's first line)."""

    def exited() -> bool:
        if node.last is None and LAST_STEP in node.text().partition(after)[2]:
            node.last = time.monotonic()
        return node.poll() is not None

    _wait_for(exited, [node])


def _rank_of(pid: int) -> int:
    """A worker's RANK, from its environment."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(kv for kv in environ if kv.startswith(b"RANK=")).split(b"=", 1)[1])


# --- a lost node: the survivor finishes at the smaller world size ----------------------
@pytest.fixture(scope="module")
def lost(tmp_path_factory, store_port):
    d = tmp_path_factory.mktemp("lost")
    argv = [*TINY, f"--checkpoint-dir={d / 'ckpt'}", *CKPT]
    a = Node(d, "a", store_port, argv)
    b = Node(d, "b", store_port, argv, fault="stall:any:6")
    try:
        _wait_for(lambda: (d / "fired").exists(), [a, b])
        b_rank = _rank_of(b.descendants()[0])
        pids = b.lose()
        _until_exit(a, "dlrm_dist: restart 1")
        return {"dir": d, "a": a, "b_rank": b_rank, "pids": pids}
    finally:
        a.clean_up()
        b.clean_up()


@pytest.mark.timeout(200)
def test_a_lost_node_the_survivor_restarts_smaller_and_trains_as_if_never_stopped(lost, straight):
    a = lost["a"]
    log = a.text()
    assert a.proc.returncode == 0, log[-4000:]
    assert all(not Path(f"/proc/{pid}").exists() for pid in lost["pids"])
    first, _, after = log.partition("dlrm_dist: restart 1")
    assert "dlrm_dist: start" in first or "world size 2" in first  # rank 0 may be the other
    restart = "dlrm_dist: restart 1" + after.splitlines()[0]
    ckpt = lost["dir"] / "ckpt"
    start, threads = restart.split("); ", 1)  # the start, then the threads it chose
    assert start + ")" == (
        "dlrm_dist: restart 1 (of at most 3 on this node): world size 1 on 1 "
        f"node(s), local batch 16 of the global 16; resuming from {ckpt / 'step-4'} (step 4, "
        "saved by 2 rank(s))"
    ), log[-4000:]
    assert threads.endswith(")") and " thread(s) per rank (" in threads, restart
    resumed = _losses(after)
    assert sorted(resumed) == list(range(5, 13))
    np.testing.assert_allclose(
        [resumed[s] for s in range(5, 13)], straight.losses[4:], rtol=0, atol=1e-5
    )


@pytest.mark.timeout(200)
def test_the_survivor_exits_0_within_seconds_of_its_last_step(lost):
    a = lost["a"]
    assert a.proc.returncode == 0 and a.last is not None and a.ended is not None
    assert a.ended - a.last < 15, a.text()[-3000:]  # not torchrun's 300 s exit barrier
    assert "DistStoreError" not in a.text() and "Traceback" not in a.text()


@pytest.mark.timeout(200)
def test_the_lost_nodes_table_wise_shards_come_back_from_the_checkpoint(lost, straight, tmp_path):
    """The first start's plan put half the tables on the lost node's rank, their only copy;
    the survivor's final weights of exactly those tables are the uninterrupted run's."""
    plan = lost["a"].text().split("dlrm_dist: restart 1")[0]
    held = re.findall(
        rf"^(t_cat_\d)\s+\d+ x 4\s+table_wise\s+fused\s+{lost['b_rank']}\s", plan, re.M
    )
    assert len(held) == 2, plan[-3000:]
    got = _final_tensors(lost["dir"] / "ckpt", tmp_path / "final.pt")
    for table in held:
        (name,) = [k for k in straight.final_weights if k.endswith(f".{table}.weight")]
        (key,) = [k for k in got if k.endswith(f".{table}.weight")]
        np.testing.assert_allclose(
            got[key].numpy(), straight.final_weights[name], rtol=0, atol=1e-5, err_msg=table
        )


# --- a node added at a restart: the world grows ----------------------------------------
@pytest.mark.timeout(200)
def test_a_node_added_at_a_restart_grows_the_world_and_both_finish(tmp_path, store_port, straight):
    """One node trains alone; its worker crashes at step 2 (torchrun restarts it: its restart
    count is 1), then stalls at step 6 (its save of step 4 published). A second node joins
    (its restart count: 0); the first's agent restarts its worker for the newcomer (a
    restart torchrun counts as none), and both resume from step 4 at world size 2: they
    meet although their agents count restarts differently."""
    argv = [*TINY, f"--checkpoint-dir={tmp_path / 'ckpt'}", *CKPT]
    a = Node(tmp_path, "a", store_port, argv, fault="exit:any:2;stall:any:6:1", share=False)
    nodes = [a]
    try:
        _wait_for(lambda: (tmp_path / "fired.1").exists(), nodes)
        b = Node(tmp_path, "b", store_port, argv, share=False)
        nodes.append(b)
        grown = "world size 2 on 2 node(s)"  # rank 0 prints: either node's log

        def logs() -> str:
            return a.text() + b.text()

        last = _wait_for(
            lambda: LAST_STEP in logs().partition(grown)[2] and time.monotonic(), nodes
        )
        _wait_for(lambda: a.poll() is not None and b.poll() is not None, nodes)
        assert [a.proc.returncode, b.proc.returncode] == [0, 0], logs()[-6000:]
        ckpt = tmp_path / "ckpt"
        alone = "world size 1 on 1 node(s), local batch 16 of the global 16; starting fresh"
        assert f"dlrm_dist: start: {alone}" in a.text()
        assert f"dlrm_dist: restart 1 (of at most 3 on this node): {alone}" in a.text()
        # printed by rank 0, whichever node holds it: "start" or "restart 1 (...)"
        assert (
            f": {grown}, local batch 8 of the global 16; resuming from {ckpt / 'step-4'} "
            "(step 4, saved by 1 rank(s))"
        ) in logs(), logs()[-6000:]
        resumed = _losses(logs().partition(grown)[2])
        assert sorted(resumed) == list(range(5, 13))
        np.testing.assert_allclose(
            [resumed[s] for s in range(5, 13)], straight.losses[4:], rtol=0, atol=1e-5
        )
        for node in nodes:  # both exit promptly (no exit-barrier wait) and cleanly
            assert node.ended - last < 15, node.text()[-3000:]
            assert "Traceback" not in node.text()
    finally:
        for node in nodes:
            node.clean_up()


# --- a save in flight, interrupted by a kill --------------------------------------------
@pytest.mark.timeout(120)
def test_a_kill_during_a_background_save_leaves_the_previous_checkpoint_the_newest(
    tmp_path, straight
):
    """The save of step 8 has written its shards and hangs before it publishes while
    training goes on (the step waited only for the host copy); SIGKILLed at step 10, the
    run leaves step-4 the newest checkpoint, which resumes bit for bit."""
    ckpt = [f"--checkpoint-dir={tmp_path / 'ckpt'}", "--checkpoint-every=4"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLRM_TEST_")}
    env |= {"PYTHONPATH": str(ROOT), "DLRM_TEST_FAULT": "slowsave:0:8"}
    env |= {"DLRM_TEST_FAULT_MARK": str(tmp_path / "fired")}
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fault_hooks", *TINY, *ckpt], cwd=ROOT, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        step_10 = "Finished training it 4/6 of epoch 1"
        deadline = time.monotonic() + 90
        while not ((tmp_path / "fired").exists() and step_10 in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert [s for s, _ in list_checkpoints(tmp_path / "ckpt")] == [4]
    unfinished = tmp_path / "ckpt" / ".tmp-step-8"
    assert (unfinished / "__0_0.distcp").is_file() and not (unfinished / "checkpoint.json").exists()
    resumed = run(parse_args([*TINY, *ckpt, "--resume=auto"]))
    assert resumed.losses == straight.losses[4:]  # one process: bit for bit
    for name, want in straight.final_weights.items():
        assert np.array_equal(resumed.final_weights[name], want), name


# --- a global batch the new world cannot split ------------------------------------------
@pytest.mark.timeout(120)
def test_a_world_that_cannot_split_the_batch_is_one_line_at_every_start_and_no_hang(tmp_path):
    """3 ranks and a global batch of 16: every start (the first and torchrun's restart)
    stops at once with one line saying what to change; the job ends, it does not hang."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLRM_TEST_")}
    env.pop("TORCHELASTIC_RESTART_COUNT", None)
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node=3", "--max-restarts=1"]
    cmd += ["--monitor-interval=0.1", "-m", "dlrm_dist.train", *TINY]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode != 0 and time.monotonic() - started < 90
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert (
        errors
        == [
            "ERROR: --mini-batch-size=16 is not divisible by the world size 3: use a multiple of 3 "
            "(this start formed 1 node(s); an elastic job, --nnodes MIN:MAX, needs a batch that "
            "every world size it can form divides)"
        ]
        * 2
    ), proc.stderr[-3000:]
    assert f'File "{ROOT / "dlrm_dist"}' not in proc.stderr  # torchrun's own report only
