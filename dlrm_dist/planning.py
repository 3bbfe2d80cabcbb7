"""Planning the sharding: topology, per-table constraints, torchrec's planner, and what to
change when the tables do not fit (the plan itself in words: `plan_report`).

Pure functions of the config, the model's tables and the cluster's shape: nothing here
needs a process group or the cluster's hardware, so `python -m dlrm_dist.plan` can plan
64 GPUs on a laptop and the unit tests can check the arithmetic. torchrec's planner does
the placement; what we add is the mapping from our config onto its inputs, errors that
say what to change.

Per-table overrides (`[sharding.tables.NAME]`) take the table name (`t_cat_3`) or, since
every table here has exactly one feature, that feature's name (`cat_3`).

Memory is counted in GB of 2^30 bytes, as torchrec counts it (its 32 GB HBM default is
32 * 2^30), so `--hbm-gb 141` means 141 * 2^30 bytes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

import torch
from torch import nn
from torchrec.distributed.collective_utils import invoke_on_rank_and_broadcast_result
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.constants import DDR_CAP, HBM_CAP
from torchrec.distributed.planner.proposers import (
    GreedyProposer,
    GridSearchProposer,
    UniformProposer,
)
from torchrec.distributed.planner.storage_reservations import HeuristicalStorageReservation
from torchrec.distributed.planner.types import (
    HardwareConfig,
    KernelConfig,
    ParameterConstraints,
    PlannerError,
    ShardingOption,
    Storage,
    Topology,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.types import CacheParams, ShardingPlan
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.optim import RowWiseAdagrad

from dlrm_dist import compat
from dlrm_dist.arch import row_weight_table
from dlrm_dist.config import Config, DataConfig, ShardingConfig, choices
from dlrm_dist.embeddings import SequencePoolingArch, sparse_collections
from dlrm_dist.errors import ConfigError

log = logging.getLogger("dlrm_dist")

GB = 1024**3

# What torchrec's EmbeddingBagCollectionSharder offers per device, restricted to the
# choices our config can name (grid_shard, key_value, ssd kernels are left out): on CUDA
# every one, on CPU all but the row-wise types and the UVM kernels. Kernels: fused ones first.
_TYPES = tuple(t for t in choices("sharding", "sharding_type") if t != "auto")
_KERNELS = tuple(
    sorted(
        (k for k in choices("sharding", "compute_kernel") if k != "auto"),
        key=lambda k: k == "dense",
    )
)
_CUDA_ONLY = ("row_wise", "table_row_wise", "fused_uvm", "fused_uvm_caching")
SHARDING_TYPES_BY_DEVICE = {
    "cpu": tuple(t for t in _TYPES if t not in _CUDA_ONLY),
    "cuda": _TYPES,
}
# What torchrec's EmbeddingCollectionSharder (unpooled lookups, used for learned pooling
# weights on sharded tables) offers, less data_parallel: its dense sequence lookup
# returned wrongly shaped rows on CPU here (torchrec 1.9.2).
SEQUENCE_SHARDING_TYPES_BY_DEVICE = {
    "cpu": ("table_wise", "column_wise"),
    "cuda": ("table_wise", "row_wise", "column_wise"),
}
SEQUENCE_WHY = "--weighted-pooling=learned looks rows up unpooled, from sharded tables"
KERNELS_BY_DEVICE = {
    "cpu": tuple(k for k in _KERNELS if k not in _CUDA_ONLY),
    "cuda": _KERNELS,
}
FUSED_KERNELS = tuple(k for k in _KERNELS if k != "dense")

# The optimizer fused into backward on the embeddings, per [optim] optimizer. The
# planner sizes optimizer state from the parameter's `_optimizer_classes`: SGD adds
# nothing, Adagrad one float per weight, row-wise Adagrad one per row, Adam two per weight.
EMBEDDING_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rwsadagrad": RowWiseAdagrad,
    "adam": torch.optim.Adam,
}
# Sharded learned pooling weights get what the reference gives its dense pooling weights:
# the dense optimizer (rwsadagrad's is elementwise Adagrad), fused into backward.
ROW_WEIGHT_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rwsadagrad": torch.optim.Adagrad,
    "adam": torch.optim.Adam,
}

# torchrec's planner default: keep 15% of HBM free for what it does not model.
RESERVED_HBM_FRACTION = 0.15
# torchrec's default proposers walk every option of every table, and each proposal is
# partitioned over all ranks: 800 proposals, 20 s for 128 ranks. Its greedy proposers
# stop after this many feasible proposals without a better one (same plans on MLPerf's
# tables at 8-128 ranks, 3x faster).
PROPOSER_PATIENCE = 10


@dataclass(frozen=True)
class MemorySpec:
    """Per-rank capacities the planner packs into, and where each number came from."""

    hbm_bytes: int
    ddr_bytes: int
    hbm_source: str
    ddr_source: str


@dataclass
class PlanResult:
    """A plan plus what it was planned against, enough to describe it without the planner."""

    plan: ShardingPlan
    options: list[ShardingOption]  # the planner's chosen options, with shard storage
    tables: list[EmbeddingBagConfig]
    topology: Topology
    memory: MemorySpec
    usable: Storage  # per rank, after torchrec's reservation (margin, dense, KJT)
    batch_size_per_rank: int
    optimizer: str


def host_memory_bytes() -> int:
    """Physical RAM of this host (no psutil dependency for one number)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_per_rank(
    device_type: str,
    cfg: ShardingConfig,
    local_world_size: int,
    device: torch.device | None = None,
) -> MemorySpec:
    """HBM: --hbm-gb, else the CUDA device's total memory, else torchrec's default (when
    planning for GPUs this machine lacks). DDR: --ddr-gb, else this host's RAM shared by
    its local ranks."""
    if cfg.hbm_gb > 0:
        hbm, hbm_source = int(cfg.hbm_gb * GB), "--hbm-gb"
    elif device_type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device or torch.cuda.current_device())
        hbm, hbm_source = props.total_memory, f"detected {props.name}"
    elif device_type == "cuda":
        hbm, hbm_source = HBM_CAP, "torchrec's default; set --hbm-gb"
    else:
        hbm, hbm_source = 0, "none on cpu"
    if cfg.ddr_gb > 0:
        ddr, ddr_source = int(cfg.ddr_gb * GB), "--ddr-gb"
    else:
        try:
            ddr = host_memory_bytes() // max(1, local_world_size)
            ddr_source = f"this host's RAM / {local_world_size} local rank(s)"
        except (ValueError, OSError):
            ddr, ddr_source = DDR_CAP, "torchrec's default; set --ddr-gb"
    return MemorySpec(hbm, ddr, hbm_source, ddr_source)


def build_topology(
    world_size: int, device_type: str, memory: MemorySpec, local_world_size: int
) -> Topology:
    """torchrec's recommended construction (TopologyFactory; a direct Topology warns). Our
    numbers go in as the trainer's overrides, so they win over anything it would detect."""
    return TopologyFactory.create_topology(
        trainer_config=TrainerConfig(
            world_size=world_size,
            local_world_size=local_world_size,
            hbm_cap_bytes=memory.hbm_bytes if device_type == "cuda" else None,
            ddr_cap_bytes=memory.ddr_bytes,
        ),
        hardware_config=HardwareConfig(),
        kernel_config=KernelConfig(compute_device=device_type),
    )


def expected_pooling_factors(data: DataConfig, rows: Sequence[int]) -> list[float]:
    """Mean indices per bag and table, which sizes the planner's input/output estimates.

    multi_hot_sizes are exact (random-fast and Criteo), Criteo's one-hot ids are 1, and
    num_indices_per_lookup is exact when fixed. Otherwise a
    bag has k = rint(max(1, u * c)) indices, u ~ U(0, 1), c = min(rows, num_indices_per_lookup),
    so E[k] = (1.5 + 2 + ... + (c - 1) + c / 2) / c: k = 1 on u*c < 1.5, k = j on a band of
    width 1, k = c on the last half band. random-fast keeps duplicate indices, so that is
    exact there; the reference generator dedups each bag, so an upper estimate for it.
    """
    if data.multi_hot_sizes:
        return [float(k) for k in data.multi_hot_sizes]
    if data.generation == "dataset":
        return [1.0] * len(rows)
    nipl = data.num_indices_per_lookup
    if data.num_indices_per_lookup_fixed:
        return [float(nipl)] * len(rows)
    out = []
    for n in rows:
        c = min(n, nipl)
        out.append(1.0 if c == 1 else (1.5 + sum(range(2, c)) + c / 2) / c)
    return out


def per_rank_batch_size(global_batch: int, world_size: int) -> int:
    """The largest per-rank slice of a global batch, which is what memory must hold."""
    return max(1, math.ceil(global_batch / world_size))


def _resolve_overrides(
    cfg: ShardingConfig, names: Sequence[str], features: dict[str, str]
) -> dict[str, dict[str, str]]:
    """Map override keys (table or feature names) onto table names; reject unknown ones."""
    by_feature = {feature: table for table, feature in features.items()}
    out: dict[str, dict[str, str]] = {}
    for key, settings in cfg.tables.items():
        table = key if key in names else by_feature.get(key)
        if table is None:
            raise ConfigError(
                f"[sharding.tables.{key}] names no table; the tables are {_name_range(names)} "
                f"(or name one by its feature: {_name_range(list(by_feature), 4)})"
            )
        if table in out:
            raise ConfigError(
                f"[sharding.tables] sets {table} twice (as {table} and its feature "
                f"{features[table]}); keep one"
            )
        out[table] = dict(settings)
    return out


def _name_range(names: Sequence[str], most: int = 30) -> str:
    return ", ".join(names) if len(names) <= most else f"{names[0]} .. {names[-1]}"


def table_constraints(
    tables: Sequence[EmbeddingBagConfig],
    cfg: ShardingConfig,
    device_type: str,
    pooling_factors: Sequence[float],
    replicate: str = "",
    sequence: bool = False,
) -> dict[str, ParameterConstraints]:
    """Per-table planner constraints from the config, checked against what the device runs.

    `auto` leaves the choice to the planner among what the device supports; a forced
    type or kernel applies to every table; [sharding.tables.*] wins per table. FBGEMM's
    fused kernels need dim % 4 == 0, so other tables are replicated with the dense kernel:
    a forced setting yields to that (with a note), an override contradicting it is an error.
    `replicate` (a reason) replicates every table the same way. `sequence`: the tables
    are an EmbeddingCollection's (SEQUENCE_SHARDING_TYPES_BY_DEVICE, fused kernels).
    """
    names = [t.name for t in tables]
    features = {t.name: t.feature_names[0] for t in tables}
    overrides = _resolve_overrides(cfg, names, features)
    out: dict[str, ParameterConstraints] = {}
    replicated: list[str] = []
    for table, pooling in zip(tables, pooling_factors):
        own = overrides.get(table.name, {})
        if sequence:
            types, kernels, yielded = _allowed_sequence(table, own, cfg, device_type)
        else:
            types, kernels, yielded = _allowed(table, own, cfg, device_type, replicate)
        if yielded:
            replicated.append(table.name)
        cache = None
        if cfg.cache_ratio > 0 and "fused_uvm_caching" in kernels:
            # the share of the table's rows the HBM cache holds; the rest stay in host memory
            cache = CacheParams(load_factor=cfg.cache_ratio)
        out[table.name] = ParameterConstraints(
            sharding_types=types,
            compute_kernels=kernels,
            pooling_factors=[float(pooling)],
            cache_params=cache,
        )
    if replicated and replicate:
        log.info("note: every table runs data_parallel with the dense kernel: %s", replicate)
    elif replicated:
        log.info(
            "note: %d table(s) (%s) have a dim not divisible by 4 and run data_parallel "
            "with the dense kernel (FBGEMM's fused kernels need dim %% 4 == 0)",
            len(replicated),
            _name_range(replicated, 4),
        )
    return out


def _requested(
    name: str,
    own: dict[str, str],
    cfg: ShardingConfig,
    device_type: str,
    types_here: Sequence[str],
    kernels_here: Sequence[str],
    why: str,
) -> tuple[str, str, str, str]:
    """A table's sharding type and kernel (its override, else the global setting) and
    where each came from, each `auto` or one of those that may run here; `why` follows
    the setting in the error when not."""
    stype = own.get("sharding_type", cfg.sharding_type)
    kernel = own.get("compute_kernel", cfg.compute_kernel)
    type_from = f"[sharding.tables.{name}]" if "sharding_type" in own else "--sharding-type"
    kernel_from = f"[sharding.tables.{name}]" if "compute_kernel" in own else "--compute-kernel"
    for key, value, src, allowed in (
        ("sharding_type", stype, type_from, types_here),
        ("compute_kernel", kernel, kernel_from, kernels_here),
    ):
        if value != "auto" and value not in allowed:
            raise ConfigError(
                f"table {name}: {key} {value} (from {src}){why}; "
                f"on {device_type.upper()} use one of " + " | ".join(allowed)
            )
    return stype, kernel, type_from, kernel_from


def _allowed(
    table: EmbeddingBagConfig,
    own: dict[str, str],
    cfg: ShardingConfig,
    device_type: str,
    replicate: str = "",
) -> tuple[list[str], list[str], bool]:
    """(sharding types, kernels) one table may use, and whether a forced setting yielded
    to the dim % 4 rule (or to `replicate`, a reason). `own` is the table's override."""
    name = table.name
    types_here = SHARDING_TYPES_BY_DEVICE[device_type]
    kernels_here = KERNELS_BY_DEVICE[device_type]
    stype, kernel, type_from, kernel_from = _requested(
        name, own, cfg, device_type, types_here, kernels_here, " needs CUDA"
    )
    if table.embedding_dim % 4 or replicate:
        for key, value, src, want in (
            ("sharding_type", stype, type_from, "data_parallel"),
            ("compute_kernel", kernel, kernel_from, "dense"),
        ):
            if key in own and value not in ("auto", want):
                _cannot_shard(name, key, value, src, want, table.embedding_dim, replicate)
        yielded = stype not in ("auto", "data_parallel") or kernel not in ("auto", "dense")
        return ["data_parallel"], ["dense"], yielded
    replicate = stype == "data_parallel" or kernel == "dense"
    if replicate and (stype not in ("auto", "data_parallel") or kernel in FUSED_KERNELS):
        # torchrec replicates only with its dense kernel and shards only with fused ones;
        # the table's own setting wins over a global one, two of a kind are an error
        if "sharding_type" in own and "compute_kernel" not in own:
            kernel = "auto"
        elif "compute_kernel" in own and "sharding_type" not in own:
            stype = "auto"
        else:
            raise ConfigError(
                f"table {name}: sharding_type {stype} (from {type_from}) and "
                f"compute_kernel {kernel} (from {kernel_from}) do not go together: "
                "data_parallel runs only with dense, every other type only with "
                + " | ".join(k for k in kernels_here if k != "dense")
            )
    if stype != "auto":
        types = [stype]
    elif kernel == "dense":
        types = ["data_parallel"]
    else:
        types = [t for t in types_here if kernel == "auto" or t != "data_parallel"]
    if kernel != "auto":
        return types, [kernel], False
    # the kernels that run the allowed types: dense replicates, fused ones shard
    sharded = types != ["data_parallel"]
    kernels = [
        k
        for k in kernels_here
        if (k == "dense" and "data_parallel" in types) or (k != "dense" and sharded)
    ]
    return types, kernels, False


def _cannot_shard(
    name: str, key: str, value: str, src: str, want: str, dim: int, replicate: str
) -> NoReturn:
    """A table's own `key = value` where the table must be replicated (`want`): because of
    `replicate` (a reason), else because its dim is not divisible by 4."""
    if replicate:
        raise ConfigError(
            f'table {name}: {key} {value} (from {src}): {replicate}; set {key} = "{want}"'
        )
    raise ConfigError(
        f"table {name}: {key} {value} (from {src}) needs an embedding dim "
        f"divisible by 4 (FBGEMM's fused kernels), but its dim is "
        f'{dim}; set {key} = "{want}" for it'
    )


def _allowed_sequence(
    table: EmbeddingConfig, own: dict[str, str], cfg: ShardingConfig, device_type: str
) -> tuple[list[str], list[str], bool]:
    """_allowed for an EmbeddingCollection's table (dim % 4 == 0 by construction)."""
    types_here = SEQUENCE_SHARDING_TYPES_BY_DEVICE[device_type]
    kernels_here = tuple(k for k in KERNELS_BY_DEVICE[device_type] if k != "dense")
    stype, kernel, _, _ = _requested(
        table.name, own, cfg, device_type, types_here, kernels_here, f": {SEQUENCE_WHY}"
    )
    types = list(types_here) if stype == "auto" else [stype]
    return types, (list(kernels_here) if kernel == "auto" else [kernel]), False


def _row_weight_constraint(table: ParameterConstraints) -> ParameterConstraints:
    """A weight table (4 wide) goes where its table may go, column-wise as table-wise."""
    types = list(
        dict.fromkeys("table_wise" if t == "column_wise" else t for t in table.sharding_types)
    )
    return ParameterConstraints(
        sharding_types=types,
        compute_kernels=list(table.compute_kernels),
        pooling_factors=list(table.pooling_factors),
    )


@contextmanager
def _optimizer_hint(sparse_arch: nn.Module, optimizer: str) -> Iterator[None]:
    """Tell the planner which optimizer the tables will carry, for the duration of planning.

    torchrec's storage estimator reads `param._optimizer_classes`, which
    apply_optimizer_in_backward sets; we plan before that runs, and its sharder accepts
    exactly one optimizer per parameter, so the hint is removed again afterwards.
    Parameters that already carry an optimizer keep theirs.
    """
    tagged = []
    for collection, weights in sparse_collections(sparse_arch):
        cls = (ROW_WEIGHT_OPTIMIZERS if weights else EMBEDDING_OPTIMIZERS)[optimizer]
        for param in collection.parameters():
            if not hasattr(param, "_optimizer_classes"):
                param._optimizer_classes = [cls]
                tagged.append(param)
    try:
        yield
    finally:
        for param in tagged:
            del param._optimizer_classes


def embedding_tables(model: nn.Module) -> list[EmbeddingBagConfig | EmbeddingConfig]:
    """The tables the planner places: an EBC's, or (SequencePoolingArch) the two ECs'."""
    out: list[EmbeddingBagConfig | EmbeddingConfig] = []
    for collection, _ in sparse_collections(model.sparse_arch):
        if isinstance(collection, EmbeddingCollection):
            out += collection.embedding_configs()
        else:
            out += collection.embedding_bag_configs()
    return out


def plan_sharding(
    model: nn.Module,
    topology: Topology,
    memory: MemorySpec,
    constraints: dict[str, ParameterConstraints],
    batch_size_per_rank: int,
    optimizer: str,
    pg: torch.distributed.ProcessGroup | None = None,
) -> PlanResult:
    """Run torchrec's planner; with a process group, on rank 0 with the result broadcast.

    Not `collective_plan`: when rank 0's planner fails there, the other ranks wait in the
    broadcast forever. Here the failure itself is broadcast, and every rank raises the
    same ConfigError.
    """
    tables = embedding_tables(model)
    reservation = HeuristicalStorageReservation(percentage=RESERVED_HBM_FRACTION)
    planner = EmbeddingShardingPlanner(
        topology=topology,
        batch_size=batch_size_per_rank,
        storage_reservation=reservation,
        proposer=[
            GridSearchProposer(),
            GreedyProposer(threshold=PROPOSER_PATIENCE),
            GreedyProposer(use_depth=False, threshold=PROPOSER_PATIENCE),
            UniformProposer(),
        ],
        constraints=constraints,
        stats=[],  # plan_report.describe_plan is the summary; skip torchrec's long table
        debug=False,
    )
    sharders = [EmbeddingBagCollectionSharder(), EmbeddingCollectionSharder()]

    def run() -> ShardingPlan | str:
        with _optimizer_hint(model.sparse_arch, optimizer):
            try:
                return planner.plan(model, sharders)
            except PlannerError as exc:
                space = compat.search_space(planner, model, sharders)
                return _explain_failure(space, reservation, tables, topology, exc)

    out = run() if pg is None else invoke_on_rank_and_broadcast_result(pg, 0, run)
    if isinstance(out, str):
        raise ConfigError(out)
    reserved = reservation.last_reserved_topology
    usable = reserved.devices[0].storage if reserved else topology.devices[0].storage
    return PlanResult(
        plan=out,
        options=compat.selected_options(planner),
        tables=tables,
        topology=topology,
        memory=memory,
        usable=usable,
        batch_size_per_rank=batch_size_per_rank,
        optimizer=optimizer,
    )


def plan_for_config(
    model: nn.Module,
    cfg: Config,
    world_size: int,
    device_type: str,
    local_world_size: int,
    device: torch.device | None = None,
    batch_size_per_rank: int = 0,
    pg: torch.distributed.ProcessGroup | None = None,
) -> PlanResult:
    """Config -> plan, the one path the trainer and `python -m dlrm_dist.plan` share, so
    the plan printed for a cluster is the plan that cluster would train with.
    batch_size_per_rank 0 = the largest per-rank slice of the global batch."""
    if device_type not in SHARDING_TYPES_BY_DEVICE:
        raise ConfigError(f"device {device_type!r}: plan for cpu or cuda")
    memory = memory_per_rank(device_type, cfg.sharding, local_world_size, device)
    topology = build_topology(world_size, device_type, memory, local_world_size)
    tables = embedding_tables(model)
    # a QR feature's two tables both read its bags: the factor of the input feature
    arch = model.sparse_arch
    per_feature = expected_pooling_factors(cfg.data, arch.feature_rows)
    sources = arch.table_sources
    pooling = [per_feature[sources[t.name]] for t in tables]
    if isinstance(arch, SequencePoolingArch):  # learned pooling weights, sharded
        weight_tables = {row_weight_table(s) for s in arch.specs}
        main = [(t, p) for t, p in zip(tables, pooling) if t.name not in weight_tables]
        constraints = table_constraints(
            [t for t, _ in main], cfg.sharding, device_type, [p for _, p in main], sequence=True
        )
        for spec in arch.specs:
            constraints[row_weight_table(spec)] = _row_weight_constraint(constraints[spec.name])
    else:
        replicate = ""
        if cfg.model.weighted_pooling == "learned":
            replicate = (
                "learned pooling weights on tables of a dim not divisible by 4 are "
                "replicated dense parameters"
            )
        constraints = table_constraints(tables, cfg.sharding, device_type, pooling, replicate)
        if world_size == 1 and device_type == "cpu":
            _replicate_small_tables(tables, constraints)
    batch = batch_size_per_rank or per_rank_batch_size(cfg.data.mini_batch_size, world_size)
    return plan_sharding(model, topology, memory, constraints, batch, cfg.optim.optimizer, pg=pg)


# One CPU rank: a table of at most this many weights (rows x dim; 256 KB of fp32) runs
# data_parallel when its sharding is left to the planner. Nothing is distributed on one
# rank, and for tables this small a dense gradient of the whole table (zeroed, written
# and applied each step) costs less than the sharded lookup's fixed overhead: config C's
# 15 tables of 100 and 1000 rows x 16 trained 12 % faster all data_parallel than in the
# planner's mix of data_parallel and table_wise, 3 % faster than all table_wise
# (BENCHMARKS.md, whole processes). Larger tables keep the planner's choice.
ONE_RANK_SMALL_TABLE = 1 << 16


def _replicate_small_tables(
    tables: Sequence[EmbeddingBagConfig], constraints: dict[str, ParameterConstraints]
) -> None:
    """One CPU rank: fp32 tables of at most ONE_RANK_SMALL_TABLE weights whose type and
    kernel are the planner's to choose run data_parallel with the dense kernel."""
    small = []
    for table in tables:
        c = constraints[table.name]
        auto = len(c.sharding_types) > 1 and "data_parallel" in c.sharding_types
        size = table.num_embeddings * table.embedding_dim
        if auto and size <= ONE_RANK_SMALL_TABLE and table.data_type == DataType.FP32:
            c.sharding_types, c.compute_kernels = ["data_parallel"], ["dense"]
            small.append(table.name)
    if small:
        log.info(
            "note: one rank: %d small table(s) (%s) run data_parallel (a dense gradient "
            "of a table this small costs less than a sharded lookup)",
            len(small),
            _name_range(small, 4),
        )


def memory_tier(topology: Topology) -> str:
    """Where the tables live: HBM on CUDA, DDR on CPU."""
    return "hbm" if topology.compute_device == "cuda" else "ddr"


def _explain_failure(
    space: list[ShardingOption],
    reservation: HeuristicalStorageReservation,
    tables: list[EmbeddingBagConfig],
    topology: Topology,
    exc: PlannerError,
) -> str:
    """One line: which table(s) cannot be placed, what they need against what a rank
    has, and what to change. torchrec's own message is a page of planner internals."""
    world, cuda = topology.world_size, topology.compute_device == "cuda"
    cap = topology.devices[0].storage
    reserved = reservation.last_reserved_topology
    if reserved is None:  # torchrec's reservation alone exceeds a rank's HBM
        return _no_hbm_left(reservation, cap)
    usable = reserved.devices[0].storage
    uvm = any(o.compute_kernel.startswith("fused_uvm") for o in space)  # tables in DDR
    if not cuda:
        fixes = f"raise --ddr-gb (now {cap.ddr / GB:.1f})"
        where = f"a rank has {usable.ddr / GB:.2f} GB DDR usable"
    elif uvm:
        fixes = f"raise --hbm-gb (now {cap.hbm / GB:.1f}) or --ddr-gb (now {cap.ddr / GB:.1f})"
        where = f"a rank has {usable.hbm / GB:.2f} GB HBM and {usable.ddr / GB:.2f} GB DDR usable"
    else:
        fixes = f"raise --hbm-gb (now {cap.hbm / GB:.1f})"
        where = f"a rank has {usable.hbm / GB:.2f} GB HBM usable"
    fixes += f", use more ranks (now {world})"
    if cuda and not uvm:
        fixes += ", or keep tables in host memory: --compute-kernel=fused_uvm_caching"
    if not space:
        return f"cannot plan the embeddings: {str(exc).splitlines()[0]}; {where}; {fixes}"
    closest = _closest_options(space, usable, cuda)
    too_big = [t for t in tables if t.name in closest and closest[t.name][0] > 0]
    if too_big:
        listed = ", ".join(
            f"{t.name} ({t.num_embeddings} x {t.embedding_dim}) needs {closest[t.name][1]}"
            for t in too_big[:3]
        )
        if len(too_big) > 3:
            listed += ", and " + ", ".join(t.name for t in too_big[3:])
        return f"cannot fit on one rank: {listed}; {where}; {fixes}"
    tier = "hbm" if cuda else "ddr"
    need = sum(
        min(sum(getattr(s.storage, tier) for s in o.shards) for o in space if o.name == t.name)
        for t in tables
        if t.name in closest
    )
    return (
        f"cannot place all {len(closest)} tables together: they need at least "
        f"{need / GB:.2f} GB {tier.upper()} in all, {world} ranks have "
        f"{world * getattr(usable, tier) / GB:.2f} GB ({where}); {fixes}"
    )


def _no_hbm_left(reservation: HeuristicalStorageReservation, cap: Storage) -> str:
    dense = getattr(reservation, "_dense_storage", None)
    kjt = getattr(reservation, "_kjt_storage", None)
    held = (
        f"{RESERVED_HBM_FRACTION:.0%} margin + {dense.hbm / GB:.2f} GB dense parameters "
        f"+ {kjt.hbm / GB:.2f} GB input batches"
        if dense and kjt
        else "margin, dense parameters and input batches"
    )
    return (
        f"no HBM left for the embeddings: torchrec reserves {held} of each rank's "
        f"{cap.hbm / GB:.1f} GB; raise --hbm-gb or lower the batch per rank "
        "(--mini-batch-size, more ranks)"
    )


def _closest_options(
    space: list[ShardingOption], usable: Storage, cuda: bool
) -> dict[str, tuple[int, str]]:
    """Per table, the option closest to fitting (the least its largest shard overflows a
    rank's usable storage): {table: (bytes over, what it needs, in words)}."""
    closest: dict[str, tuple[int, str]] = {}
    for option in space:
        hbm = max(shard.storage.hbm for shard in option.shards)
        ddr = max(shard.storage.ddr for shard in option.shards)
        over_hbm, over_ddr = hbm - usable.hbm, ddr - usable.ddr
        need = (f"{hbm / GB:.2f} GB HBM" if over_hbm >= over_ddr else f"{ddr / GB:.2f} GB DDR") + (
            f" ({option.compute_kernel})" if cuda else ""
        )
        over = max(over_hbm, over_ddr)
        if option.name not in closest or over < closest[option.name][0]:
            closest[option.name] = (over, need)
    return closest
