"""torchx components: submit dlrm_dist training to local, Slurm or Kubernetes schedulers.

    torchx run -s local_cwd launch/components.py:train -j 1x2 -- --num-batches=100
    torchx run --dryrun -s slurm launch/components.py:train
    torchx run --dryrun -s kubernetes launch/components.py:train --gpu 8 -j 2x8

Built on torchx's `dist.ddp` (torchrun with c10d rendezvous on the first node): what we
add is the trainer's module, its config file, GPU flags and the data/checkpoint mounts.
"""

# torchx's component linter reads the annotations as written: it needs typing's
# Optional/Dict spelling and real (not postponed) annotations.
from typing import Dict, Optional

from torchx import specs
from torchx.components import dist

# The image the Dockerfiles build (docker/README.md); local_cwd ignores it and runs the
# working directory, Slurm runs it as the job's directory.
DEFAULT_IMAGE = "ghcr.io/dlrm-dist/dlrm_dist:0.1.0-cuda"
DATA_MOUNT = "/data"
CHECKPOINT_MOUNT = "/checkpoints"


def train(
    *trainer_args: str,
    config: str = "configs/default.toml",
    image: str = DEFAULT_IMAGE,
    name: str = "dlrm_dist",
    j: str = "1x2",
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    h: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    data_dir: Optional[str] = None,
    checkpoint_dir: Optional[str] = None,
) -> specs.AppDef:
    """Train DLRM with dlrm_dist under torchrun: `-j NODESxPROCS` ranks.

    Args:
        trainer_args: flags for `python -m dlrm_dist.train` (the reference's names),
            after `--`; they override the config file
        config: TOML config file, relative to the image's working directory
        image: container image (Kubernetes), job directory (Slurm); ignored by local_cwd
        name: job name
        j: {nnodes}x{nproc_per_node}; with GPUs, nproc_per_node <= GPUs per node
        cpu: CPUs per node
        gpu: GPUs per node; > 0 adds --use-gpu (nccl, one GPU per local rank)
        memMB: host memory per node, MB
        h: a registered named resource; takes precedence over cpu, gpu, memMB
        env: extra environment variables, e.g. NCCL_DEBUG=INFO
        max_retries: scheduler retries of the whole job after a failure
        rdzv_port: c10d rendezvous port on the first node (multi-node only)
        data_dir: host directory mounted read-only at /data (Criteo files)
        checkpoint_dir: host directory mounted at /checkpoints; the trainer saves there
    """
    args = ["--config", config]
    if gpu > 0:
        args.append("--use-gpu")
    mounts: list[str] = []
    if data_dir:
        mounts += ["type=bind", f"src={data_dir}", f"dst={DATA_MOUNT}", "readonly"]
    if checkpoint_dir:
        mounts += ["type=bind", f"src={checkpoint_dir}", f"dst={CHECKPOINT_MOUNT}"]
        args += ["--checkpoint-dir", CHECKPOINT_MOUNT]
    return dist.ddp(
        *args,
        *trainer_args,
        m="dlrm_dist.train",
        image=image,
        name=name,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=j,
        env={"PYTHONUNBUFFERED": "1", **(env or {})},
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts or None,
    )
