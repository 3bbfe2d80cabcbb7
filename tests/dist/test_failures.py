"""Failures midway: a rank SIGKILLed under `torchrun --max-restarts` is restarted and the
run ends with the weights of the run never stopped; a peer that stalls or dies makes the
others stop within --dist-timeout with one line; NaN/Inf, an id outside its table and no
data are one line each, and the checkpoints already there stay as they were.

The faults come from tests.fault_hooks (an env var arms one rank at one step)."""

from __future__ import annotations

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
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from dlrm_dist.checkpoint import list_checkpoints
from dlrm_dist.train import main
from tests.common import ROOT, file_hashes, free_port, tiny_job
from tests.fault_hooks import arm

TINY = tiny_job(data_generation="random-fast", sharding_type="table_wise", threads=1)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLRM_TEST_")}
    env.pop("TORCHELASTIC_RESTART_COUNT", None)
    return env | {"PYTHONPATH": str(ROOT)} | extra


def _torchrun(argv: list[str], fault: str = "", timeout: float = 150, mark: Path | None = None):
    """torchrun in its own session, so that a hang kills its ranks too (and shows the log);
    --dist-timeout turns a stuck collective into an error well before that. mark: the
    file the fault writes when it fires."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["--max-restarts=3", "--monitor-interval=0.1", "-m", "tests.fault_hooks", *argv]
    cmd += ["--dist-timeout=30"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    env = _env(DLRM_TEST_FAULT=fault)
    if mark is not None:
        env["DLRM_TEST_FAULT_MARK"] = str(mark)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, **pipes)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun hung; its log:\n{(out + err)[-5000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _final_tensors(directory: Path, out: Path) -> dict:
    """The final checkpoint's tensors, whole (DCP gathers the shards)."""
    step, path = list_checkpoints(directory)[-1]
    assert step == 12
    dcp_to_torch_save(path, out)
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value

    walk("", torch.load(out, weights_only=True))
    return flat


# --- surviving a killed rank: torchrun restarts the group -----------------------------
@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    d = tmp_path_factory.mktemp("straight")
    proc = _torchrun([*TINY, f"--checkpoint-dir={d}", "--checkpoint-every=4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _final_tensors(d, d.parent / "straight.pt")


@pytest.mark.timeout(200)
@pytest.mark.parametrize(
    ("fault", "resumed_from"),
    [("kill:1:6", "step-4"), ("kill:0:9", "step-8"), ("kill:1:2", None)],
    ids=["rank1-step6", "rank0-step9", "rank1-step2-before-any-checkpoint"],
)
def test_a_killed_rank_is_restarted_and_the_run_ends_as_if_never_stopped(
    straight, tmp_path, fault, resumed_from
):
    ckpt = [f"--checkpoint-dir={tmp_path / 'ckpt'}", "--checkpoint-every=4", "--resume=auto"]
    mark = tmp_path / "fired"
    proc = _torchrun([*TINY, *ckpt], fault, mark=mark)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    # the rank killed itself; torchrun logs whichever failed rank it saw first: the
    # killed one (-9) or its peer, stopped by the lost connection (status 3)
    assert mark.is_file(), log[-3000:]
    assert re.search(r"failed \(exitcode: (-9|3)\)", log), log[-3000:]
    if resumed_from:
        assert f"checkpoint: resumed from {tmp_path / 'ckpt' / resumed_from}" in log
    else:
        assert "checkpoint: resumed from" not in log
    got = _final_tensors(tmp_path / "ckpt", tmp_path / "got.pt")
    assert got.keys() == straight.keys() and got
    for name, want in straight.items():
        np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-6, err_msg=name)


# --- no hangs: a peer stalls or dies, the other stops within --dist-timeout ------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("action", ["stall", "exit"])
def test_a_peer_that_stalls_or_dies_stops_the_other_rank_within_the_timeout(tmp_path, action):
    """Two ranks started by hand (no launcher to stop the survivor, as across nodes)."""
    timeout_s, mark = 5, tmp_path / "fired"
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = _env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            DLRM_TEST_FAULT=f"{action}:1:5",
            DLRM_TEST_FAULT_MARK=str(mark),
        )
        cmd = [sys.executable, "-m", "tests.fault_hooks", *TINY, f"--dist-timeout={timeout_s}"]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, **pipes))
    try:
        out, err = procs[0].communicate(timeout=100)
        ended = time.time()
    finally:
        procs[1].kill()
        procs[1].communicate()
    fired = float(mark.read_text())
    assert procs[0].returncode == 3, err[-3000:]
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and errors[0].startswith(
        f"ERROR: rank 0: timed out after {timeout_s}s waiting for step 6 (its all-to-alls and "
        "all-reduces) (a peer rank died or stalled); see the other ranks' output, then rerun "
        "with --resume=auto (raise --dist-timeout if a rank is only slow)"
    ), err[-3000:]
    assert "Traceback" not in out + err
    assert ended - fired < timeout_s + 10


# --- clear errors, nothing lost ---------------------------------------------------------
TRAIN_8 = [*TINY, "--num-batches=8", "--nepochs=1", "--checkpoint-every=4"]
# fault at step 6 (checkpoints every 4: step-4 is the last good one) -> the ERROR line
CASES = {
    "nan-loss": ("nanloss", "the loss is nan at step 6: training stopped"),
    "nan-input": ("nan", "the dense features of the batch of step 6 hold nan"),
    "inf-input": ("inf", "the dense features of the batch of step 6 hold inf"),
    "bad-index": (
        "badid",
        "sparse index 20 of feature cat_0 (table t_cat_0, 20 rows) is out of range in the "
        "batch of step 6: ids must be in [0, 20)",
    ),
}


def _one_error(capsys, says: str) -> None:
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and errors[0].startswith("ERROR: ") and says in errors[0], err
    assert "Traceback" not in out + err


@pytest.fixture(scope="module")
def last_good(tmp_path_factory):
    """A run whose loss turns NaN at step 6: it leaves step-4, the last good state."""
    d = tmp_path_factory.mktemp("last_good")
    with pytest.MonkeyPatch.context() as mp:
        arm("nanloss", 0, 6, mp.setattr)
        rc = main([*TRAIN_8, f"--checkpoint-dir={d}"])
    assert rc == 2 and [s for s, _ in list_checkpoints(d)] == [4]
    assert sorted(p.name for p in d.iterdir()) == ["step-4"]
    return d


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(CASES))
def test_bad_values_stop_with_one_line_and_keep_the_last_good_checkpoint(
    last_good, name, monkeypatch, capsys
):
    action, says = CASES[name]
    before = file_hashes(last_good)
    arm(action, 0, 6, monkeypatch.setattr)
    capsys.readouterr()
    assert main([*TRAIN_8, f"--checkpoint-dir={last_good}", "--resume=auto"]) == 2
    _one_error(capsys, says)
    assert file_hashes(last_good) == before


@pytest.mark.timeout(60)
def test_empty_data_is_one_line(tmp_path, capsys):
    raw = tmp_path / "train.txt"
    raw.write_text("")
    argv = [
        "--data-generation=dataset",
        "--data-set=kaggle",
        f"--raw-data-file={raw}",
        f"--processed-data-file={tmp_path / 'processed'}",
        "--arch-sparse-feature-size=4",
        "--arch-mlp-bot=13-8-4",
        "--arch-mlp-top=4-1",
        "--mini-batch-size=4",
    ]
    capsys.readouterr()
    assert main(argv) == 2
    _one_error(capsys, "empty table (no rows)")
    assert main([*TINY, "--data-size=0", "--num-batches=0"]) == 2
    _one_error(capsys, "--data-size must be at least 1")
