"""Multi-hot Criteo, MLPerf DLRM-DCNv2 style: every one-hot id becomes a fixed-size bag.

MLPerf's reference (mlcommons/training, recommendation_v2/torchrec_dlrm/multi_hot.py) turns the
one-hot row id i of table t into the bag [i, s_1, ..., s_{k_t - 1}], k_t = multi_hot_sizes[t]:
row i of a (rows_t, k_t) table it draws once from np.random (seed 0), its first column the
id itself, the others `randint(0, rows_t)` (uniform) or `int(pareto(a=0.25)) % rows_t`
(pareto). So an id always expands to the same bag: on every rank, in every epoch, in training
and evaluation. We keep that contract without the table (40M rows x 100 slots is 32 GB of
int64 for one of its tables): slot j of id i in table t is computed when needed, from a
counter-based hash of (seed, t, i, j), so any rank expands only the ids of its own slice.

    z = splitmix64(key_t + G * ((i << 32) + j))    key_t = hashing.derive_key(seed, tag, t)
    u = (z >> 11) / 2^53                           uniform in [0, 1), 53 bits
    uniform  floor(u * rows_t)
    pareto   floor(X) mod rows_t, X = (1 - u)^(-1/a) - 1 = expm1(-log1p(-u) / a), a = 0.25

X is numpy's `pareto(a)` (the Lomax law, P(X > x) = (1 + x)^-a) drawn by its inverse CDF.
floor(X) mod rows_t is computed exactly in float64 (X <= 2^212; fmod of integer-valued doubles
is exact). MLPerf casts X with `astype(np.int32)` first, which is undefined for the X >= 2^31
it draws with probability (1 + 2^31)^-0.25 = 0.5% (x86 gives -2^31, so those slots all land
on the row -2^31 mod rows_t); we keep the formula instead. A slot does not depend on k_t:
growing a size appends slots.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dlrm_dist.data.hashing import BLOCK, GOLDEN, derive_key, hash_array, unit53

DISTRIBUTIONS = ("uniform", "pareto")
PARETO_A = 0.25  # MLPerf's shape parameter
_TAG = 0x6D756C7469686F74  # "multihot": keeps these draws apart from random-fast's


class MultiHot:
    """Expands one-hot Criteo ids into bags of sizes[t] ids (see the module docstring).

    sizes and rows: one per table (F); distribution: uniform | pareto; seed: the run's seed.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        rows: Sequence[int],
        distribution: str = "uniform",
        seed: int = 0,
    ) -> None:
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"multi-hot distribution {distribution!r}: use uniform | pareto")
        if len(sizes) != len(rows) or min(sizes, default=1) < 1:
            raise ValueError(
                f"multi-hot sizes need one size >= 1 per table ({len(rows)}), got {list(sizes)}"
            )
        self.sizes = [int(k) for k in sizes]
        self.rows = [int(n) for n in rows]
        self.distribution = distribution
        self.keys = [derive_key(seed, _TAG, t) for t in range(len(rows))]

    def bags(self, table: int, ids: np.ndarray) -> np.ndarray:
        """The bags of ids (n,) (rows of `table`): (n, k) int64, column 0 the ids themselves."""
        ids = np.asarray(ids, dtype=np.int64)
        k, rows, key = self.sizes[table], self.rows[table], self.keys[table]
        out = np.empty((ids.size, k), dtype=np.int64)
        out[:, 0] = ids
        if k == 1:
            return out
        slots = np.arange(1, k, dtype=np.uint64)
        step = max(1, BLOCK // (k - 1))  # samples per block: its draws stay in the L2 cache
        for lo in range(0, ids.size, step):
            z = (ids[lo : lo + step].astype(np.uint64) << np.uint64(32))[:, None] + slots
            z *= np.uint64(GOLDEN)
            u = unit53(hash_array(z, key, out=z))
            if self.distribution == "uniform":
                u *= rows
                draw = np.minimum(np.floor(u, out=u), rows - 1, out=u)
            else:
                x = np.expm1(np.log1p(-u, out=u) * (-1.0 / PARETO_A))
                draw = np.fmod(np.floor(x, out=x), rows, out=x)
            out[lo : lo + step, 1:] = draw
        return out

    def expand(self, sparse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One-hot ids (n, F) -> lengths (F, n) int64 (all sizes[t] in row t) and values
        (sum_t n sizes[t],) int64, table-major, each sample's bag contiguous."""
        n = sparse.shape[0]
        lengths = np.repeat(np.asarray(self.sizes, dtype=np.int64)[:, None], n, axis=1)
        values = [self.bags(t, sparse[:, t]).reshape(-1) for t in range(len(self.sizes))]
        return lengths, np.concatenate(values) if values else np.empty(0, dtype=np.int64)
