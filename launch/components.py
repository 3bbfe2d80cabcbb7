"""torchx components: submit dlrm_dist training to local, Slurm or Kubernetes schedulers.

    torchx run -s local_cwd launch/components.py:train -j 1x2 -- --num-batches=100
    torchx run --dryrun -s slurm launch/components.py:train
    torchx run --dryrun -s kubernetes launch/components.py:train --gpu 8 -j 2x8

    torchx run -s kubernetes launch/components.py:train -j 1:4x8 --gpu 8 \
        --max_restarts 3 --checkpoint_dir /mnt/ckpt          # elastic: 1 to 4 nodes

Built on torchx's `dist.ddp` (torchrun with c10d rendezvous on the first node): what we
add is the trainer's module, its config file, GPU flags, the data/checkpoint mounts, and
what an elastic job (`-j MIN:MAXxPROCS`, or `--max_restarts`) needs that `dist.ddp` has
no parameter for: torchrun's `--max_restarts` (the survivors of a lost node restart in
place at the smaller world size), `--rdzv_conf`, `--resume auto` (every restart resumes
from the newest checkpoint), and TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (with the agents'
shared store, torch's agents never tell a node that joins a running job where the store
is: it times out; without it, each start's rank 0 worker hosts a fresh store).
"""

# torchx's component linter reads the annotations as written: it needs typing's
# Optional/Dict spelling and real (not postponed) annotations.
import shlex
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
    max_restarts: int = 0,
    rdzv_conf: Optional[str] = None,
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
        max_restarts: torchrun's restarts of the worker group after a failure or a
            change of nodes (elastic: -j MIN:MAXxPROCS); the ranks resume from the newest
            checkpoint (--resume auto with checkpoint_dir)
        rdzv_conf: torchrun's --rdzv_conf, e.g. last_call_timeout=5,keep_alive_interval=2
            (how soon a restart forms: see the README)
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
    nodes = j.split("x")[0] if "x" in j else "1"
    elastic = ":" in nodes and len(set(nodes.split(":"))) > 1
    restarts = max_restarts > 0 or elastic  # torchrun restarts the ranks in place
    if checkpoint_dir:
        mounts += ["type=bind", f"src={checkpoint_dir}", f"dst={CHECKPOINT_MOUNT}"]
        args += ["--checkpoint-dir", CHECKPOINT_MOUNT] + ["--resume", "auto"] * restarts
    env = {"PYTHONUNBUFFERED": "1", **(env or {})}
    if elastic or max_restarts > 0:
        env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    app = dist.ddp(
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
        env=env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts or None,
    )
    return _torchrun_flags(app, max_restarts, rdzv_conf)


def _torchrun_flags(app: specs.AppDef, max_restarts: int, rdzv_conf: Optional[str]):
    """torchrun's flags dist.ddp does not take, put into its command line (`bash -c CMD`)."""
    flags = f"--max_restarts {max_restarts} " if max_restarts > 0 else ""
    flags += f"--rdzv_conf {shlex.quote(rdzv_conf)} " if rdzv_conf else ""
    (role,) = app.roles
    assert role.args[0] == "-c" and role.args[1].startswith("torchrun "), role.args
    role.args[1] = "torchrun " + flags + role.args[1][len("torchrun ") :]
    return app
