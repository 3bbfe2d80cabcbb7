"""Planning in processes: every rank of a group gets rank 0's plan or its error, the trainer
logs the plan, the `python -m dlrm_dist.plan` command."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest

from dlrm_dist import planning
from dlrm_dist.cli import parse_args
from dlrm_dist.errors import ConfigError
from tests.common import ROOT
from tests.unit.test_planning import (
    MLPERF,
    _assert_mlperf_plan,
    _model,
)


def test_the_trainer_logs_the_plan_on_rank_0(caplog):
    from dlrm_dist.train import run

    argv = ["--arch-embedding-size=4-3-2", "--num-batches=1", "--progress-bar=false"]
    with caplog.at_level(logging.INFO, logger="dlrm_dist"):
        run(parse_args(argv))
    assert "Sharding plan: 3 tables on 1 cpu rank(s)" in caplog.text
    assert re.search(r"^t_cat_2 +2 x 2 +data_parallel +dense +0 ", caplog.text, re.M)


def plan_on_every_rank(argvs: list[list[str]]) -> list[str]:
    """One rank of a 2-rank group planning each argv: the plan, or the error it raised."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    out = []
    for argv in argvs:
        cfg, model = _model(argv)
        try:
            result = planning.plan_for_config(model, cfg, 2, "cpu", 2, pg=dist.GroupMember.WORLD)
            out.append(str(result.plan))
        except ConfigError as exc:
            out.append(f"ConfigError: {exc}")
    dist.destroy_process_group()
    return out


@pytest.mark.slow  # two spawned processes importing torchrec: ~20 s
@pytest.mark.timeout(200)
def test_in_a_process_group_every_rank_gets_rank_0s_plan_or_its_error():
    from tests.multiprocess import launch

    fits = ["--arch-embedding-size=1000-2000", "--arch-sparse-feature-size=8", "--arch-mlp-bot=4-8"]
    too_big = [*fits[1:], "--arch-embedding-size=100000000-2", "--ddr-gb=1"]
    got = launch(2, plan_on_every_rank, [fits, too_big])
    assert got[0] == got[1]  # and neither rank waited forever for a failed rank 0
    assert "t_cat_1" in got[0][0]
    assert got[0][1].startswith("ConfigError: cannot fit on one rank: t_cat_0 (100000000 x 8)")


def test_plan_cli_prints_a_64_gpu_plan_and_fails_in_one_line():
    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "dlrm_dist.plan", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    good = start("--config", MLPERF, "--world-size", "64", "--device", "cuda", "--hbm-gb", "141")
    bad = start("--config", MLPERF, "--world-size=2", "--device=cuda", "--hbm-gb=8")
    out, err = good.communicate(timeout=120)
    assert good.returncode == 0, err
    assert "HBM 141.0 GB (--hbm-gb)" in out
    _assert_mlperf_plan(out, 64)
    out, err = bad.communicate(timeout=120)
    assert bad.returncode == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: cannot fit on one rank: t_cat_0 ")


def test_plan_cli_help_shows_its_flags_and_the_trainers(capsys):
    from dlrm_dist.plan import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--world-size" in out and "--batch-size-per-rank" in out and "--arch-mlp-bot" in out
