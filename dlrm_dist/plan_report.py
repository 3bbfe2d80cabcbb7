"""The sharding plan in words: where each table went and what each rank holds, as rank 0
logs it and `python -m dlrm_dist.plan` prints it (the numbers: the planner's own per-shard
estimates, in `planning.PlanResult`)."""

from __future__ import annotations

from collections.abc import Sequence

from dlrm_dist.planning import GB, RESERVED_HBM_FRACTION, PlanResult, memory_tier


def compact_ranks(ranks: Sequence[int]) -> str:
    """[0, 1, 2, 3, 7, 9, 10] -> '0-3,7,9-10'."""
    ranks = sorted(set(ranks))
    parts, start = [], None
    for i, r in enumerate(ranks):
        if start is None:
            start = r
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            parts.append(str(r) if r == start else f"{start}-{r}")
            start = None
    return ",".join(parts)


def describe_plan(result: PlanResult) -> str:
    """The plan as a person checks it: where each table went and what each rank holds.

    Memory is the planner's own per-shard estimate (the numbers it packed with): weights,
    optimizer state and the shard's input/output buffers.
    """
    topo, mem = result.topology, result.memory
    world, device = topo.world_size, topo.compute_device
    lines = [
        f"Sharding plan: {len(result.tables)} tables on {world} {device} rank(s); "
        f"per rank: batch {result.batch_size_per_rank}, "
        + (f"HBM {mem.hbm_bytes / GB:.1f} GB ({mem.hbm_source}), " if device == "cuda" else "")
        + f"DDR {mem.ddr_bytes / GB:.1f} GB ({mem.ddr_source}); "
        f"optimizer {result.optimizer}",
    ]
    header = ("table", "rows x dim", "sharding", "kernel", "ranks", "HBM GB/rank", "DDR GB/rank")
    rows, hbm, ddr = _placements(result)
    lines += _table(header, rows, right=(5, 6))
    lines.append("")
    groups: list[tuple[list[int], str, str]] = []
    for rank in range(world):
        cells = (f"{hbm[rank] / GB:.3f}", f"{ddr[rank] / GB:.3f}")
        if groups and groups[-1][0][-1] == rank - 1 and groups[-1][1:] == cells:
            groups[-1][0].append(rank)
        else:
            groups.append(([rank], *cells))
    lines += _table(
        ("ranks", "HBM GB", "DDR GB"),
        [(compact_ranks(r), h, d) for r, h, d in groups],
        right=(1, 2),
    )
    tier = memory_tier(topo)
    peak = max(hbm if tier == "hbm" else ddr)
    usable = getattr(result.usable, tier)
    margin = f"{RESERVED_HBM_FRACTION:.0%} margin, " if tier == "hbm" else ""
    lines.append(
        f"peak rank: {peak / GB:.2f} of {usable / GB:.2f} GB {tier.upper()} usable "
        f"after torchrec's reservation ({margin}dense parameters, input batches)"
    )
    lines.append(
        "memory: the planner's estimates per shard (weights + optimizer state + "
        "input/output buffers); GB = 2^30 bytes"
    )
    return "\n".join(lines)


def _placements(result: PlanResult) -> tuple[list[tuple[str, ...]], list[int], list[int]]:
    """A row per table (where it went, its largest shard's GB per rank) and the bytes of
    HBM and of DDR each rank holds."""
    by_table = {o.name: o for o in result.options}
    hbm = [0] * result.topology.world_size
    ddr = [0] * result.topology.world_size
    rows = []
    for table in result.tables:
        option = by_table[table.name]
        t_hbm: dict[int, int] = {}
        t_ddr: dict[int, int] = {}
        for shard in option.shards:
            t_hbm[shard.rank] = t_hbm.get(shard.rank, 0) + shard.storage.hbm
            t_ddr[shard.rank] = t_ddr.get(shard.rank, 0) + shard.storage.ddr
        for rank in t_hbm:
            hbm[rank] += t_hbm[rank]
            ddr[rank] += t_ddr[rank]
        rows.append(
            (
                table.name,
                f"{table.num_embeddings} x {table.embedding_dim}",
                option.sharding_type,
                option.compute_kernel,
                compact_ranks([s.rank for s in option.shards]),
                f"{max(t_hbm.values()) / GB:.3f}",
                f"{max(t_ddr.values()) / GB:.3f}",
            )
        )
    return rows, hbm, ddr


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int]) -> list:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    return [fmt(header), *(fmt(r) for r in rows)]
