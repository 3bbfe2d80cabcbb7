"""Launching, without processes: the torchx component's AppDef and the Docker images' pins."""

from __future__ import annotations

import re
import tomllib

import pytest

from launch.components import CHECKPOINT_MOUNT, DATA_MOUNT, DEFAULT_IMAGE, train
from tests.common import ROOT


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
