"""All distribution in one place: init process group -> plan -> shard (DMP) -> optimizer.

One process or many, the trainer goes through the same steps: without torchrun we bring
up a one-rank gloo group, so the single-process run is the sharded code path.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DataParallelWrapper, DistributedModelParallel
from torchrec.distributed.types import ShardingPlan
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from dlrm_dist import compat, elastic, plan_report, planning, threads
from dlrm_dist.config import Config, OptimConfig
from dlrm_dist.embeddings import sparse_collections
from dlrm_dist.errors import ConfigError

log = logging.getLogger("dlrm_dist")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(use_gpu: bool = False, backend: str = "", timeout_s: float = 300.0) -> DistEnv:
    """Join the torchrun group, or start a one-rank gloo group when run directly.

    As in the reference, CUDA is used only when asked for (`--use-gpu`) and present;
    the backend follows the device (nccl on CUDA, gloo on CPU) unless given. A collective
    that waits longer than timeout_s for a peer raises (dlrm_dist.failures names it)."""
    use_cuda = use_gpu and torch.cuda.is_available()
    if use_gpu and not use_cuda:
        log.warning("note: --use-gpu but no CUDA device is visible; training on CPU")
    backend = backend or ("nccl" if use_cuda else "gloo")
    if backend == "nccl" and not use_cuda:
        raise ConfigError("--dist-backend=nccl needs CUDA (--use-gpu on a GPU machine); use gloo")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        init_method = "env://"
    else:
        rank, world, local_rank, local_world = 0, 1, 0, 1
        init_method = f"tcp://127.0.0.1:{_free_port()}"
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        # torchrun's restarted group meets in the same store as the start before: under the
        # prefix this start's ranks agree on (dlrm_dist.elastic), gloo never reads the
        # addresses of ranks that are gone
        store, rank, world = next(dist.rendezvous(init_method, rank, world, timeout=timeout))
        store = dist.PrefixStore(elastic.attempt_prefix(store, rank, world, timeout_s), store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return DistEnv(rank, world, local_rank, local_world, device, backend)


def set_threads(env: DistEnv, requested: int = 0, helper: bool = False) -> threads.Choice:
    """Threads per rank, chosen once at start-up (dlrm_dist.threads: cores / local ranks,
    less cores other processes keep busy; `requested` > 0 overrides; `helper`: a core
    for the data worker if there is one to spare). The ranks meet first, so that each
    samples the machine's load while the others wait too."""
    if requested <= 0 and env.world_size > 1:
        dist.barrier()
    choice = threads.choose(requested, env.local_world_size, helper=helper)
    torch.set_num_threads(choice.threads)
    return choice


def set_tf32(env: DistEnv, on: bool) -> None:
    """--tf32: TF32 tensor cores for fp32 matmuls on this rank's GPU (torch's switch is
    per process)."""
    if env.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def local_batch(global_batch: int, env: DistEnv, flag: str = "--mini-batch-size") -> int:
    """Each rank trains on an equal slice of the global batch (the reference's meaning
    of the batch size, kept at every world size an elastic job restarts at); a size the
    world does not divide is an error, raised alike on every rank (so no rank is left
    waiting)."""
    if global_batch % env.world_size:
        hint = elastic.batch_split_hint(env.world_size, elastic.Start.from_env())
        raise ConfigError(
            f"{flag}={global_batch} is not divisible by the world size {env.world_size}: {hint}"
        )
    return global_batch // env.world_size


def agree_num_batches(n: int) -> int:
    """All ranks stop together: each offers how many batches it can take, all take the
    fewest. One collective before training, so a short shard never leaves the others
    waiting in an all-to-all that will not come."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return n
    t = torch.tensor([n], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-sized tensors from all ranks (in rank order), on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def global_mean(loss: torch.Tensor) -> float:
    """The global batch's loss: the mean of the ranks' local means (equal local batches).
    Only for reporting; the gradients are already global (DDP averages the MLPs', and
    torchrec's all-to-all divides the embeddings' by the world size)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return loss.item()
    t = loss.detach().clone()
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def all_sum(value: float, device: torch.device) -> float:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_initialized()


def from_rank0(value: Any) -> Any:
    """Rank 0's value (any picklable object) on every rank; as is without a group."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _sharders() -> list:
    return [EmbeddingBagCollectionSharder(), EmbeddingCollectionSharder()]


def build_plan(model: torch.nn.Module, cfg: Config, env: DistEnv) -> ShardingPlan:
    """Plan the tables of model.sparse_arch for this world (dlrm_dist.planning: rank 0
    plans, every rank gets the plan or the same ConfigError); rank 0 logs the plan."""
    result = planning.plan_for_config(
        model,
        cfg,
        env.world_size,
        env.device.type,
        env.local_world_size,
        device=env.device,
        pg=dist.GroupMember.WORLD,
    )
    if env.rank == 0:
        log.info("%s", plan_report.describe_plan(result))
    return result.plan


class _SingleRank(DataParallelWrapper):
    """One rank has nothing to all-reduce: skip DDP, which cost ~1 ms per step on CPU."""

    def wrap(self, dmp, env, device) -> None:
        pass


# The reference's optimizers. Embeddings: the class torchrec maps onto an FBGEMM fused
# optimizer (EXACT_SGD, EXACT_ADAGRAD, EXACT_ROWWISE_ADAGRAD, ADAM; updates only the rows a
# batch touches, as the reference's sparse gradients do). MLPs: the dense counterpart;
# the reference's RWSAdagrad is elementwise Adagrad on dense gradients. eps are the
# reference's torch defaults (FBGEMM's names; only eps is passed, the rest are defaults
# both sides share). The classes live in planning, which sizes their state.
_EPS = {"sgd": {}, "adagrad": {"eps": 1e-10}, "rwsadagrad": {"eps": 1e-10}, "adam": {}}
_EMBEDDING_OPTIMIZERS = {
    name: (cls, _EPS[name]) for name, cls in planning.EMBEDDING_OPTIMIZERS.items()
}
_ROW_WEIGHT_OPTIMIZERS = {
    name: (cls, _EPS[name]) for name, cls in planning.ROW_WEIGHT_OPTIMIZERS.items()
}


class PlainSGD(torch.optim.SGD):
    """torch.optim.SGD without momentum, weight decay or maximize (the reference's): its
    step is `p -= lr * grad` in one `_foreach_add_` per group, which on the CPU is
    torch's own per-parameter `add_` (the same bits, tested), without the ~100 us a
    step of torch's bookkeeping around it. Its state dict is SGD's, so checkpoints load
    either way.

    torchrec's replicated tables are slices of one flat weight (TableBatchedEmbeddingSlice,
    whose .grad is a view of the weight's, made on each read): where a group holds every
    slice of a weight, the weight is stepped whole, one `add_` for all its tables (config
    C's 15: 190 -> ~30 us alone, the same bits)."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, lr=lr)
        self._stepped: dict[int, tuple[list, list[torch.Tensor]]] = {}  # see _targets

    def _targets(self, params: list) -> list[torch.Tensor]:
        """What a step of `params` updates: the parameters, each flat weight whose slices
        (every one of them) are among them in their place."""
        key = id(params)
        cached = self._stepped.get(key)
        if cached is not None and cached[0] is params:
            return cached[1]
        weights: dict[int, tuple[torch.Tensor, list]] = {}
        targets: list[torch.Tensor] = []
        for p in params:
            base = getattr(p, "_original_tensor", None)
            if base is None:
                targets.append(p)
            else:
                weights.setdefault(id(base), (base, []))[1].append(p)
        for base, slices in weights.values():
            spans = sorted((s._start_offset, s._end_offset) for s in slices)
            ends = [0] + [end for _, end in spans]
            whole = all(start == end for (start, _), end in zip(spans, ends))
            targets.extend([base] if whole and ends[-1] == base.numel() else slices)
        self._stepped[key] = (params, targets)
        return targets

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's (gradients to None), without its ~20 us a call of torch.compile's
        guard (Optimizer.zero_grad is under torch._disable_dynamo)."""
        if not set_to_none:
            super().zero_grad(set_to_none=False)
            return
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = float(group["lr"])
            grads = [(p, p.grad) for p in self._targets(group["params"])]  # read once
            dense = [(p, g) for p, g in grads if g is not None and not g.is_sparse]
            if dense:
                torch._foreach_add_([p for p, _ in dense], [g for _, g in dense], alpha=-lr)
            for p, g in grads:
                if g is not None and g.is_sparse:
                    p.add_(g, alpha=-lr)
        return loss


# The MLPs', and the replicated tables' (not fused: a plain optimizer after backward).
_DENSE_OPTIMIZERS = {
    "sgd": (PlainSGD, {}),
    "adagrad": (torch.optim.Adagrad, {"eps": 1e-10}),
    "rwsadagrad": (torch.optim.Adagrad, {"eps": 1e-10}),
    "adam": (torch.optim.Adam, {}),
}


def shard(model: torch.nn.Module, plan: ShardingPlan, env: DistEnv, cfg: OptimConfig):
    """Fuse the embedding optimizer into backward, then wrap in DistributedModelParallel."""
    if cfg.optimizer == "adam" and env.device.type == "cpu":
        raise ConfigError(
            "--optimizer=adam: FBGEMM has no fused Adam on CPU; on CPU use sgd | adagrad | "
            "rwsadagrad, or train on CUDA (--use-gpu)"
        )
    for collection, weights in sparse_collections(model.sparse_arch):
        cls, kwargs = (_ROW_WEIGHT_OPTIMIZERS if weights else _EMBEDDING_OPTIMIZERS)[cfg.optimizer]
        apply_optimizer_in_backward(
            cls, collection.parameters(), {"lr": cfg.learning_rate, **kwargs}
        )
        if env.world_size == 1:  # as _SingleRank: replicated tables need no DDP either
            compat.skip_data_parallel_grad_sync(collection)
    return DistributedModelParallel(
        module=model,
        device=env.device,
        plan=plan,
        sharders=_sharders(),
        data_parallel_wrapper=_SingleRank() if env.world_size == 1 else None,
    )


def build_optimizer(dmp: DistributedModelParallel, cfg: OptimConfig) -> CombinedOptimizer:
    """The fused embedding optimizer, plus plain optimizers for what is not fused:
    replicated (data-parallel, dense-kernel) tables get the embedding optimizer (so
    rwsadagrad stays row-wise there), the MLPs its dense counterpart."""
    rest = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    rows = _table_rows(dmp.module)
    tables = {k: v for k, v in rest.items() if id(v) in rows}
    mlps = {k: v for k, v in rest.items() if k not in tables}
    parts: list = [dmp.fused_optimizer]
    replicated = {**_EMBEDDING_OPTIMIZERS, "sgd": (PlainSGD, {})}
    for params, table in ((tables, replicated), (mlps, _DENSE_OPTIMIZERS)):
        if params:
            cls, kwargs = table[cfg.optimizer]
            parts.append(
                KeyedOptimizerWrapper(
                    params,
                    lambda ps, cls=cls, kwargs=kwargs: cls(ps, lr=cfg.learning_rate, **kwargs),
                )
            )
    return CombinedOptimizer(parts)


def _table_rows(model: torch.nn.Module) -> set[int]:
    """The ids of the tables' row parameters (not learned pooling weights), found by the
    module that holds them rather than by name."""
    return {
        id(param)
        for collection, weights in sparse_collections(model.sparse_arch)
        if not weights
        for param in collection.parameters()
    }


@torch.no_grad()
def load_full_weights(dmp: DistributedModelParallel, weights: dict[str, np.ndarray]) -> None:
    """Copy full (unsharded) tensors into this rank's shards: DMP re-initializes the
    tables it shards, so the reference's init is loaded after sharding."""
    state = dmp.module.state_dict()  # unwrapped: our own parameter names
    for name, full in weights.items():
        target = state[name]
        src = torch.from_numpy(full)
        if isinstance(target, ShardedTensor):
            for shard in target.local_shards():
                rows, cols = shard.metadata.shard_offsets
                n, d = shard.metadata.shard_sizes
                shard.tensor.copy_(src[rows : rows + n, cols : cols + d])
        else:
            target.copy_(src)


@torch.no_grad()
def gather_full_weights(
    dmp: DistributedModelParallel, names: list[str]
) -> dict[str, np.ndarray] | None:
    """Full copies of the named parameters on rank 0 (None elsewhere); all ranks call it."""
    state = dmp.module.state_dict()
    rank = dist.get_rank()
    out: dict[str, np.ndarray] = {}
    for name in names:
        value = state[name]
        if isinstance(value, ShardedTensor):
            full = torch.empty(value.size(), dtype=value.dtype) if rank == 0 else None
            value.gather(dst=0, out=full)
            value = full
        if rank == 0:
            out[name] = value.detach().cpu().numpy().copy()
    return out if rank == 0 else None
