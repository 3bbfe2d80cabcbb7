"""Checkpoints against the uninterrupted run: a run SIGKILLed right after a checkpoint and
resumed continues bit for bit (one process) or within 1e-6 (two gloo ranks); a checkpoint
moves between world sizes and sharding types; an interrupted save leaves the previous
checkpoint to resume from; bad checkpoints are one-line errors that change no file."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from dlrm_dist.checkpoint import CheckpointManager, list_checkpoints
from dlrm_dist.cli import parse_args
from dlrm_dist.train import main, run
from tests.common import ROOT, file_hashes
from tests.kill_after_save import train_then_die
from tests.multiprocess import launch, train_many
from tests.unit.test_checkpoint import BASE, REFERENCE

STEPS = 12  # 6 batches, 2 epochs


FAST = [*BASE, "--data-generation=random-fast", "--sharding-type=table_wise"]


def _run(argv: list[str]):
    return run(parse_args(argv))


def _kill_at(step: int, argv: list[str], before_publish: bool = False) -> None:
    """`python -m dlrm_dist.train argv` in a subprocess that SIGKILLs itself at `step`'s
    save: right after the checkpoint is published, or just before."""
    cmd = [sys.executable, "-m", "tests.kill_after_save"]
    cmd += ["--before"] * before_publish + [str(step), *argv]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]


def _assert_same_weights(got: dict, want: dict, atol: float = 0.0) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        if atol == 0.0:
            assert np.array_equal(got[name], value), name
        else:
            np.testing.assert_allclose(got[name], value, rtol=0, atol=atol, err_msg=name)


# --- (a) exact resume, one process ------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("argv", "kill_step", "pipelined", "next_line"),
    [
        (FAST, 8, True, "Finished training it 3/6 of epoch 1,"),
        (REFERENCE, 4, False, "Finished training it 5/6 of epoch 0,"),
    ],
    ids=["random-fast-pipelined", "random-reference-stream"],
)
def test_a_run_killed_after_a_checkpoint_resumes_bit_for_bit(
    tmp_path, capsys, argv, kill_step, pipelined, next_line
):
    straight = _run(argv)
    assert straight.pipelined is pipelined and len(straight.losses) == STEPS
    ckpt = [f"--checkpoint-dir={tmp_path}", "--checkpoint-every=4"]
    _kill_at(kill_step, [*argv, *ckpt])
    assert [s for s, _ in list_checkpoints(tmp_path)] == list(range(4, kill_step + 1, 4))

    capsys.readouterr()
    resumed = _run([*argv, *ckpt, "--resume=auto"])
    assert resumed.pipelined is pipelined
    logged = [line for line in capsys.readouterr().out.splitlines() if "training it" in line]
    assert logged[0].startswith(next_line) and len(logged) == STEPS - kill_step
    assert resumed.losses == straight.losses[kill_step:]  # bitwise
    _assert_same_weights(resumed.final_weights, straight.final_weights)
    if argv is REFERENCE:  # evaluations after the resume drew the same test data
        assert resumed.evals == straight.evals[-len(resumed.evals) :]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 8, 12]


# --- (b) two gloo ranks, (c) onto another world size and sharding ---------------------
COLUMN = [*BASE, "--data-generation=random-fast", "--sharding-type=column_wise"]


@pytest.fixture(scope="module")
def moves(tmp_path_factory):
    """1 rank column-wise saving every 4 steps; 2 ranks table-wise killed after step 4;
    then, in 1 rank: a resume of the 2-rank checkpoint; in 2 ranks: the uninterrupted
    run, the resume of the killed one, and a resume of the 1-rank checkpoint."""
    d = tmp_path_factory.mktemp("moves")
    one = _run([*COLUMN, f"--checkpoint-dir={d / 'one'}", "--checkpoint-every=4"])
    killed = [*FAST, f"--checkpoint-dir={d / 'two'}", "--checkpoint-every=4"]
    with pytest.raises(ChildFailedError):
        launch(2, train_then_die, 4, killed)
    assert [s for s, _ in list_checkpoints(d / "two")] == [4]
    shards = {p.name for p in (d / "two" / "step-4").glob("*.distcp")}
    assert shards == {"__0_0.distcp", "__1_0.distcp"}  # each rank wrote its own
    two_to_one = _run([*COLUMN, f"--resume={d / 'two' / 'step-4'}"])
    resume = [*killed, "--resume=auto"]
    # the last run resumes the finished one (step 12): nothing to train, no save, no hang
    two = launch(2, train_many, [FAST, resume, [*FAST, f"--resume={d / 'one'}/step-4"], resume])
    assert two[0][3]["losses"] == two[1][3]["losses"] == []
    assert [s for s, _ in list_checkpoints(d / "two")] == [4, 8, 12]
    return one, two[0][:3], two_to_one


@pytest.mark.timeout(200)
def test_two_ranks_killed_after_a_checkpoint_resume_within_1e6(moves):
    _, (straight, resumed, _), _ = moves
    assert len(straight["losses"]) == STEPS and straight["pipelined"]
    np.testing.assert_allclose(resumed["losses"], straight["losses"][4:], rtol=0, atol=1e-6)
    _assert_same_weights(resumed["weights"], straight["weights"], atol=1e-6)


@pytest.mark.timeout(200)
def test_a_checkpoint_moves_between_world_sizes_and_sharding_types(moves):
    one, (two_straight, _, one_to_two), two_to_one = moves
    # 1 rank column-wise -> 2 ranks table-wise, and 2 ranks table-wise -> 1 rank column-wise
    np.testing.assert_allclose(one_to_two["losses"], one.losses[4:], rtol=0, atol=1e-5)
    np.testing.assert_allclose(two_to_one.losses, two_straight["losses"][4:], rtol=0, atol=1e-5)
    _assert_same_weights(one_to_two["weights"], one.final_weights, atol=1e-5)
    _assert_same_weights(two_to_one.final_weights, two_straight["weights"], atol=1e-5)


# --- (d) atomic saves, keep-last -------------------------------------------------------
@pytest.mark.timeout(120)
def test_a_save_killed_before_publishing_leaves_the_previous_checkpoint(tmp_path):
    ckpt = [f"--checkpoint-dir={tmp_path}", "--checkpoint-every=4", "--keep-last=2"]
    _kill_at(8, [*FAST, *ckpt], before_publish=True)
    # every shard of step 8 was written, but the save never finished: not a checkpoint
    unfinished = tmp_path / ".tmp-step-8"
    assert (unfinished / ".metadata").is_file() and (unfinished / "__0_0.distcp").is_file()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4]

    straight = _run(FAST)
    resumed = _run([*FAST, *ckpt, "--resume=auto"])  # picks step 4, checks its hashes
    assert resumed.losses == straight.losses[4:]
    _assert_same_weights(resumed.final_weights, straight.final_weights)
    assert not unfinished.exists()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [8, 12]  # keep-last 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-12", "step-8"]


@pytest.mark.timeout(60)
def test_a_failed_save_is_one_error_line_and_changes_no_checkpoint(tmp_path, monkeypatch, capsys):
    publish, before = CheckpointManager._publish, {}

    def disk_full_at_8(self, state, tmp, final, files):
        if state.step == 8:
            before.update(file_hashes(tmp_path))
            raise OSError(28, "No space left on device")
        return publish(self, state, tmp, final, files)

    monkeypatch.setattr(CheckpointManager, "_publish", disk_full_at_8)
    assert main([*FAST, f"--checkpoint-dir={tmp_path}", "--checkpoint-every=4"]) == 2
    err = capsys.readouterr().err
    assert f"ERROR: could not save checkpoint {tmp_path / 'step-8'}: " in err
    assert "No space left on device" in err and "Traceback" not in err
    assert [line for line in err.splitlines() if "ERROR" in line] == [err.splitlines()[-1]]
    # the unfinished step 8 is gone; step 4 is as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-4"]
    assert file_hashes(tmp_path) == {k: v for k, v in before.items() if k.startswith("step-4")}


# --- (e) bad checkpoints: one line, exit 2, no file changed -----------------------------
SMALL = [*FAST, "--num-batches=4", "--nepochs=1", "--threads=1"]


class _Evil:
    """A pickle that runs a shell command when loaded with pickle.load."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _broken_copies(saved: Path, root: Path, marker: Path) -> dict[str, Path]:
    copies = {}
    for name in ("truncated", "corrupted", "record", "unsafe-index"):
        copies[name] = root / name / "step-4"
        shutil.copytree(saved, copies[name])
    shard = copies["truncated"] / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-100])
    shard = copies["corrupted"] / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    shard.write_bytes(bytes(data))
    record = copies["record"] / "checkpoint.json"
    record.write_text(record.read_text()[:200])
    # a code-running index whose hash is recorded, so only the unpickler stands in its way
    index = copies["unsafe-index"] / ".metadata"
    index.write_bytes(pickle.dumps(_Evil(f"touch {marker}")))
    record = copies["unsafe-index"] / "checkpoint.json"
    meta = json.loads(record.read_text())
    meta["files"][".metadata"] = {
        "bytes": index.stat().st_size,
        "sha256": hashlib.sha256(index.read_bytes()).hexdigest(),
    }
    record.write_text(json.dumps(meta))
    return copies


T_CAT_3 = "sparse_arch.embedding_bag_collection.embedding_bags.t_cat_3.weight"


# case: (flags, what the ERROR line says); {saved} and {broken} are filled in
BAD = {
    "missing": (["--resume={root}/nope"], "nope does not exist"),
    "truncated": (
        ["--resume={broken}/truncated/step-4"],
        "truncated/step-4 is damaged: __0_0.distcp has ",
    ),
    "corrupted": (
        ["--resume={broken}/corrupted/step-4"],
        "__0_0.distcp does not match its SHA-256 (corrupted)",
    ),
    "record": (["--resume={broken}/record/step-4"], "checkpoint.json is not readable JSON"),
    "unsafe-index": (
        ["--resume={broken}/unsafe-index/step-4"],
        ".metadata is not a DCP index (UnpicklingError: posix.system has no place",
    ),
    "model-shape": (
        ["--resume={saved}", "--arch-embedding-size=20-30-40-60"],
        f"model.{T_CAT_3} is 50x4 there, 60x4 here",
    ),
    "optimizer": (
        ["--resume={saved}", "--optimizer=sgd"],
        "saved with --optimizer=adagrad (this run: sgd)",
    ),
    "dir-in-use": (["--checkpoint-dir={saved}/.."], "already holds step-4"),
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """A checkpoint and broken copies of it; what the cases' flags refer to."""
    root = tmp_path_factory.mktemp("bad")
    saved = root / "ok" / "step-4"
    _run([*SMALL, f"--checkpoint-dir={saved.parent}"])
    _broken_copies(saved, root / "broken", root / "code-ran")
    return root, {"root": root, "saved": saved, "broken": root / "broken"}


def _flags(name: str, where: dict) -> tuple[list[str], str]:
    flags, says = BAD[name]
    return [*SMALL, *(f.format(**where) for f in flags)], says


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_checkpoint_is_one_error_line_and_changes_no_file(bad, name, capsys):
    root, where = bad
    argv, says = _flags(name, where)
    before = file_hashes(root)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and errors[0].startswith("ERROR: ") and says in errors[0], errors
    assert "Traceback" not in out + err
    assert file_hashes(root) == before
    assert not (root / "code-ran").exists()


@pytest.mark.timeout(90)
def test_bad_checkpoints_exit_2_from_the_command_line_without_traceback(bad):
    root, where = bad
    before = file_hashes(root)
    procs = {}
    for name in ("corrupted", "model-shape"):
        argv, says = _flags(name, where)
        cmd = [sys.executable, "-m", "dlrm_dist.train", *argv]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        procs[name] = (says, subprocess.Popen(cmd, cwd=ROOT, text=True, **pipes))
    for name, (says, proc) in procs.items():
        out, err = proc.communicate(timeout=80)
        errors = [line for line in err.splitlines() if "ERROR" in line]
        assert proc.returncode == 2, (name, err[-2000:])
        assert len(errors) == 1 and errors[0].startswith("ERROR: ") and says in errors[0]
        assert "Traceback" not in out + err
    assert file_hashes(root) == before
