"""`--data-generation random-fast`: synthetic data that each rank draws only its slice of.

The reference generator (`reference_random`) walks one sequential numpy stream, so every
rank must draw the whole global batch to find its own part. Here every random number is a
counter-based hash instead: a pure function of (seed, stream, batch, domain, global sample,
draw slot), so any contiguous range of samples of any batch can be drawn alone, and
concatenating the slices of ranks 0..W-1 gives the same global batch for every W.

The hash is splitmix64 (`hashing`: its finalizer is a murmur3-style mixer) applied to
`derive_key(seed, stream, batch) + G * counter`, G the golden-ratio increment, computed
vectorized on uint64 numpy arrays. `stream` separates train (0) from evaluation (1) data.
A counter is `(domain << 40) + local`: domain 0 holds the dense features (local =
sample * dense_features + feature), domain 1 the targets (local = sample), domain 2 + 2t the
bag sizes of table t (local = sample) and domain 3 + 2t its indices (local = sample * w_t +
slot). Each sample owns w_t = max bag size slots of table t (multi_hot_sizes[t], or
num_indices_per_lookup when fixed, else min(rows_t, num_indices_per_lookup)) whether it
uses them or not; that is what makes a sample's draws independent of the others'.

Per table t and sample:
  bag size   multi_hot_sizes[t] if given; else num_indices_per_lookup if fixed; else the
             reference's rint(max(1, u * min(rows_t, num_indices_per_lookup))).
  uniform    rint(u * (rows_t - 1)), the reference's formula.
  gaussian   clip(mu + sigma * N(0, 1), rmin, rmax) truncated to int64, mu = (rmin + rmax) / 2
             when mu == -1. N(0, 1) by Box-Muller from the two 32-bit halves of one hash (so
             its tails stop at 6.7 sigma; the clip cuts far earlier in practice).
  zipf       bounded power law over the popularity ranks k = 1..rows_t: P(k) ~ 1 / k^s,
             s = zipf_exponent, drawn by inverse CDF: exact (a binary search in the discrete
             CDF) for k <= 1024; beyond it, the continuous approximation sum_k k^-s ~ integral
             of x^-s over [k - 1/2, k + 1/2) (midpoint rule, relative error < s(s+1)/(24 k^2)
             < 1e-6 there). Rank k goes to row (a_t * (k - 1) + b_t) mod rows_t, a_t the first
             integer >= 0.618 rows_t coprime to rows_t and b_t a hash of (seed, t): a bijection,
             fixed per table and seed (the same for train and evaluation data), that spreads
             consecutive hot ranks ~0.618 of the table apart instead of packing them at row 0.
Indices are not deduplicated per bag (unlike the reference): duplicates are kept, and sum
pooling adds them up, as a real multi-hot feature with a repeated id would.
Dense features and targets are float32 uniforms in [0, 1) (24-bit), targets rounded to 0/1
when round_targets. With labels = "planted" the target uniform u becomes the click of the
seeded teacher of `planted` (u < p, p its probability over the sample's own features and
ids), 0/1 whatever round_targets says.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from dlrm_dist.arch import feature_names
from dlrm_dist.data import planted
from dlrm_dist.data.batch_source import BatchSource, RawBatch, epoch_size, local_bounds
from dlrm_dist.data.hashing import (
    BLOCK,
    GOLDEN,
    UNIT32,
    UNIT53,
    derive_key,
    hash_array,
    mix64,
    unit24,
    unit53,
)

DISTRIBUTIONS = ("uniform", "gaussian", "zipf")
DOMAIN_SHIFT = 40  # counter = (domain << 40) + local; local counters stay below 2^40

_ZIPF_HEAD = 1024  # ranks drawn from the exact discrete CDF
_ZIPF_MAX_ROWS = 1 << 31  # a_t * rank stays inside int64


@dataclass(frozen=True)
class FastDataSpec:
    """What one random-fast batch looks like (the reference's generator arguments, plus
    zipf and MLPerf-style fixed per-table bag sizes); see the module docstring."""

    dense_features: int  # m, dense features per sample
    table_sizes: tuple[int, ...]  # rows of each of the F tables
    num_indices_per_lookup: int = 10  # max (or, when fixed, exact) bag size
    fixed: bool = False
    dist: str = "uniform"  # uniform | gaussian | zipf
    rmin: float = 0.0  # gaussian: clip range and mean (-1: the range's centre), std
    rmax: float = 1.0
    mu: float = -1.0
    sigma: float = 1.0
    zipf_exponent: float = 1.05  # zipf: s in P(popularity rank k) ~ 1 / k^s
    multi_hot_sizes: tuple[int, ...] = ()  # fixed bag size per table; () = the flags above
    round_targets: bool = False
    labels: str = "random"  # random (the uniforms) | planted (planted.Teacher's clicks)

    def __post_init__(self) -> None:  # lists from a config become tuples: the spec hashes
        object.__setattr__(self, "table_sizes", tuple(int(r) for r in self.table_sizes))
        object.__setattr__(self, "multi_hot_sizes", tuple(int(k) for k in self.multi_hot_sizes))

    def bag_widths(self) -> tuple[int, ...]:
        """Draw slots per sample of each table: its largest possible bag."""
        if self.multi_hot_sizes:
            return tuple(self.multi_hot_sizes)
        nipl = self.num_indices_per_lookup
        if self.fixed:
            return (nipl,) * len(self.table_sizes)
        return tuple(min(rows, nipl) for rows in self.table_sizes)

    @property
    def random_bags(self) -> bool:
        return not (self.multi_hot_sizes or self.fixed)

    def validate(self) -> None:
        """Raises ValueError, saying what to change, unless this spec can be drawn."""
        if self.labels not in planted.LABELS:
            raise ValueError(f"labels {self.labels!r} is not supported; use random or planted")
        if self.dist not in DISTRIBUTIONS:
            raise ValueError(
                f"rand_data_dist {self.dist!r} is not supported; use uniform, gaussian or zipf"
            )
        if not self.table_sizes or min(self.table_sizes) < 1:
            raise ValueError("table_sizes needs at least one table, each with >= 1 row")
        if self.num_indices_per_lookup < 1:
            raise ValueError("num_indices_per_lookup must be at least 1")
        if self.multi_hot_sizes and (
            len(self.multi_hot_sizes) != len(self.table_sizes) or min(self.multi_hot_sizes) < 1
        ):
            raise ValueError(
                f"multi_hot_sizes needs one positive size per table ({len(self.table_sizes)}), "
                f"got {self.multi_hot_sizes}"
            )
        if self.dist == "zipf":
            if self.zipf_exponent <= 0:
                raise ValueError("zipf_exponent must be positive")
            if max(self.table_sizes) > _ZIPF_MAX_ROWS:
                raise ValueError("zipf supports tables of at most 2^31 rows; shrink the largest")


def _weyl(domain: int, local: np.ndarray) -> np.ndarray:
    """G * ((domain << 40) + local) mod 2^64, the counter part of splitmix64's state."""
    ctr = local.astype(np.uint64) + np.uint64(domain << DOMAIN_SHIFT)
    return ctr * np.uint64(GOLDEN)


class ZipfLaw:
    """Per-table constants of the zipf sampler (see the module docstring); the torch
    sampler's (`random_fast_torch`) too."""

    def __init__(self, spec: FastDataSpec, seed: int) -> None:
        s = spec.zipf_exponent
        rows = np.asarray(spec.table_sizes, dtype=np.int64)
        head = int(min(rows.max(), _ZIPF_HEAD))
        self.cdf = np.cumsum(np.arange(1, head + 1, dtype=np.float64) ** -s)
        self.head, self.head_mass, self.s = head, float(self.cdf[-1]), s
        self.lo = (head + 0.5) ** (1.0 - s) if s != 1.0 else math.log(head + 0.5)
        total = []
        for n in rows.tolist():
            if n <= head:
                total.append(self.cdf[n - 1])
            elif s == 1.0:
                total.append(self.head_mass + math.log((n + 0.5) / (head + 0.5)))
            else:
                total.append(self.head_mass + ((n + 0.5) ** (1.0 - s) - self.lo) / (1.0 - s))
        self.total = np.asarray(total)  # (F,) normalizer of each table's law
        self.rows = rows
        self.mult = np.asarray([_coprime_near(n) for n in rows.tolist()], dtype=np.int64)
        key = mix64(seed ^ 0x5A1F)
        self.shift = np.asarray(
            [mix64(key + t) % n for t, n in enumerate(rows.tolist())], dtype=np.int64
        )

    def ranks(self, u: np.ndarray, table: np.ndarray) -> np.ndarray:
        """0-based popularity ranks, u (L,) uniforms of tables `table` (L,)."""
        v = u * self.total[table]
        rank = np.searchsorted(self.cdf, v, side="right")
        tail = np.flatnonzero(v >= self.head_mass)
        if tail.size:
            w = v[tail] - self.head_mass
            s = self.s
            if s == 1.0:
                x = (self.head + 0.5) * np.exp(w)
            else:
                x = np.maximum(self.lo + (1.0 - s) * w, 0.0) ** (1.0 / (1.0 - s))
            rank[tail] = np.floor(x + 0.5).astype(np.int64) - 1
        np.clip(rank, 0, self.rows[table] - 1, out=rank)
        return rank

    def rows_of(self, rank: np.ndarray, table: np.ndarray) -> np.ndarray:
        """The per-table bijection popularity rank (0-based) -> row id."""
        n = self.rows[table]
        return (self.mult[table] * rank + self.shift[table]) % n


_Zipf = ZipfLaw  # the tests' name for it


def _coprime_near(n: int) -> int:
    a = max(1, int(n * 0.6180339887498949))
    while math.gcd(a, n) != 1:
        a += 1
    return a


class _Plan:
    """Everything about drawing samples [start, stop) that does not depend on the batch:
    the counter part (G * counter) of every draw's hash state, and per-draw constants.

    Fixed bag sizes: one hash over dense, targets and all index slots, in output order.
    Random bag sizes: one hash over dense, targets and bag sizes; then the states of the
    slots the bags use (their first `length` of w_t) are built with one np.repeat and
    hashed, so unused slots cost nothing.
    """

    def __init__(self, spec: FastDataSpec, seed: int, start: int, stop: int) -> None:
        spec.validate()
        self.spec, self.n = spec, stop - start
        n, m, nt = self.n, spec.dense_features, len(spec.table_sizes)
        widths = np.asarray(spec.bag_widths(), dtype=np.int64)
        if stop * max(int(widths.max()), m, 1) >= 1 << DOMAIN_SHIFT:
            raise ValueError(f"batch of {stop} samples is too large for random-fast; shrink it")
        samples = np.arange(start, stop, dtype=np.int64)
        parts = [_weyl(0, (samples[:, None] * m + np.arange(m)).reshape(-1)), _weyl(1, samples)]
        self.dense_end, self.targets_end = n * m, n * m + n
        # bag b = (t, i) owns slots (domain 3 + 2t, i * w_t + j), j < w_t
        bag_base = [_weyl(3 + 2 * t, samples * w) for t, w in enumerate(widths.tolist())]
        rows = np.asarray(spec.table_sizes, dtype=np.int64)
        self.scale = (rows - 1).astype(np.float64) * UNIT53  # uniform: u53 -> index
        if spec.random_bags:
            parts += [_weyl(2 + 2 * t, samples) for t in range(nt)]
            self.bag_base = np.concatenate(bag_base)  # (F * n,)
            self.caps = np.repeat(widths * UNIT53, n)  # (F * n,) cap * 2^-53
            self.slot_state = np.arange(n * widths.sum(), dtype=np.uint64) * np.uint64(GOLDEN)
        else:
            self.value_state = np.concatenate(
                [
                    (b[:, None] + _weyl(0, np.arange(w))).reshape(-1)
                    for b, w in zip(bag_base, widths)
                ]
            )
            self.lengths = np.repeat(widths[:, None], n, axis=1)  # (F, n)
            self.table = np.repeat(np.arange(nt), widths * n)  # table of each value
            self.value_scale = self.scale[self.table]
        self.state = np.concatenate(parts)
        self.zipf = ZipfLaw(spec, seed) if spec.dist == "zipf" else None
        self.mu = (spec.rmax + spec.rmin) / 2.0 if spec.mu == -1 else spec.mu
        self.teacher = None
        if spec.labels == "planted":
            self.teacher = planted.Teacher.of(spec, seed)
        self.group = 1 if self.teacher is None else self.teacher.group_size(self.n)

    def draw(self, key: int) -> RawBatch:
        """The samples of the batch whose key (hashing.derive_key) is `key`; their targets
        the uniforms, rounded (round_targets) or the teacher's clicks (planted)."""
        return self.draw_group([key])[0]

    def draw_group(self, keys: list[int]) -> list[RawBatch]:
        """draw(key) of each key; planted labels of them all in one pass (Teacher.plant)."""
        raws = [self._draw(key) for key in keys]
        if self.teacher is not None:
            self.teacher.plant(raws)
        elif self.spec.round_targets:
            for raw in raws:
                np.round(raw.targets, out=raw.targets)
        return raws

    def _draw(self, key: int) -> RawBatch:
        spec, n = self.spec, self.n
        z = hash_array(self.state, key)
        floats = unit24(z[: self.targets_end])
        dense = floats[: self.dense_end].reshape(n, spec.dense_features)
        targets = floats[self.dense_end :].reshape(n, 1)
        if not spec.random_bags:
            values = self._values(self.value_state, key, self.table, self.value_scale)
            return RawBatch(dense, self.lengths.copy(), values, targets)
        u = (z[self.targets_end :] >> np.uint64(11)).astype(np.float64)
        u *= self.caps  # the 53-bit uniform times the bag's cap
        np.maximum(u, 1.0, out=u)
        lengths = np.rint(u, out=u).astype(np.int64)  # (F * n,)
        ends = np.cumsum(lengths)
        # slot j of bag b is value ends[b] - lengths[b] + j: state = bag_base[b] + G * j
        first = self.slot_state[ends - lengths]
        state = np.repeat(self.bag_base - first, lengths)
        state += self.slot_state[: ends[-1]]
        lengths = lengths.reshape(-1, n)
        per_table = lengths.sum(axis=1)
        if spec.dist == "gaussian":
            table = scale = None
        elif spec.dist == "zipf":
            table, scale = np.repeat(np.arange(per_table.size), per_table), None
        else:
            table, scale = None, np.repeat(self.scale, per_table)
        return RawBatch(dense, lengths, self._values(state, key, table, scale), targets)

    def _values(
        self, state: np.ndarray, key: int, table: np.ndarray | None, scale: np.ndarray | None
    ) -> np.ndarray:
        """Indices (L,) int64 of the index draws with hash states state + key (L,), table-major;
        table (L,) the table of each (zipf), scale (L,) (rows - 1) * 2^-53 (uniform)."""
        out = np.empty(state.size, dtype=np.int64)
        size = min(state.size, BLOCK)
        z, u = np.empty(size, dtype=np.uint64), np.empty(size, dtype=np.float64)
        for lo in range(0, state.size, BLOCK):
            hi = min(lo + BLOCK, state.size)
            zb = hash_array(state[lo:hi], key, out=z[: hi - lo])
            if self.spec.dist == "uniform":
                assert scale is not None
                ub = u[: hi - lo]
                zb >>= np.uint64(11)
                np.copyto(ub, zb, casting="unsafe")
                ub *= scale[lo:hi]
                np.rint(ub, out=ub)
                np.copyto(out[lo:hi], ub, casting="unsafe")
            else:
                out[lo:hi] = self._other(zb, None if table is None else table[lo:hi])
        return out

    def _other(self, z: np.ndarray, table: np.ndarray | None) -> np.ndarray:
        """Gaussian or zipf indices (L,) from hashes z (L,) of tables `table` (L,)."""
        spec = self.spec
        if spec.dist == "gaussian":
            u1 = (z >> 32).astype(np.float64) * UNIT32
            u2 = (z & np.uint64(0xFFFFFFFF)).astype(np.float64) * UNIT32
            normal = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
            x = np.clip(self.mu + spec.sigma * normal, spec.rmin, spec.rmax)
            return x.astype(np.int64)
        assert self.zipf is not None and table is not None
        return self.zipf.rows_of(self.zipf.ranks(unit53(z), table), table)


@functools.lru_cache(maxsize=16)
def _plan(spec: FastDataSpec, seed: int, start: int, stop: int) -> _Plan:
    return _Plan(spec, seed, start, stop)


def draw_slice(
    spec: FastDataSpec, seed: int, stream: int, batch: int, start: int, stop: int
) -> RawBatch:
    """Samples [start, stop) of global batch `batch`: dense (n, m) f32, lengths (F, n) int64
    and values (sum of lengths,) int64 table-major, targets (n, 1) f32, n = stop - start.
    The same samples come out whatever range they are drawn in."""
    if not 0 <= start < stop:
        raise ValueError(f"sample range [{start}, {stop}) must be non-empty, from 0 up")
    return _plan(spec, seed, start, stop).draw(derive_key(seed, stream, batch))


P = TypeVar("P")


class SlicePlans(Generic[P]):
    """A source's plans of this rank's slice, one per global batch size (the full one, and a
    partial last one): `make(start, stop)` for its slice [start, stop). Both are made here,
    so a bad split of the full batch fails at once; a partial last batch the world size
    does not divide fails only if drawn (the trainer leaves it out: sources.usable_batches).
    """

    def __init__(self, source: BatchSource, make: Callable[[int, int], P]) -> None:
        self.rank, self.world_size, self.make = source.rank, source.world_size, make
        self.plans: dict[int, P] = {}
        if source.num_batches > 0:
            self(source.batch_size(0))
            last = source.batch_size(source.num_batches - 1)
            if last % source.world_size == 0:
                self(last)

    def __call__(self, size: int) -> P:
        """The plan of this rank's slice of a global batch of `size` samples."""
        if size not in self.plans:
            self.plans[size] = self.make(*local_bounds(size, self.rank, self.world_size))
        return self.plans[size]


class RandomFastData(BatchSource):
    """An epoch of random-fast batches, this rank's slice of each.

    `num_batches > 0` gives that many full batches; otherwise ceil(data_size /
    mini_batch_size), the last one partial, as `reference_random.ReferenceRandomData`.
    Every (global batch size, slice) is planned here (`SlicePlans`), so a bad split of the
    full batch fails at once. Batches are TorchRec Batches: dense (n, m), KJT keyed
    feature_names(F), labels (n,); batch b depends only on (seed, stream, b).
    """

    def __init__(
        self,
        spec: FastDataSpec,
        seed: int,
        num_batches: int,
        mini_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        data_size: int = 0,
        stream: int = 0,
    ) -> None:
        keys = feature_names(len(spec.table_sizes))
        epoch = epoch_size(num_batches, data_size, mini_batch_size)
        super().__init__(keys, mini_batch_size, *epoch, rank, world_size)
        self.spec, self.seed, self.stream = spec, seed, stream
        self._plans = SlicePlans(self, functools.partial(_Plan, spec, seed))
        self._ahead: dict[int, RawBatch] = {}  # batches drawn with an earlier one (raw)

    def raw(self, index: int) -> RawBatch:
        """This rank's slice of global batch `index`, n = batch_size(index) / world_size
        samples: dense (n, m) f32, lengths (F, n) int64, values (sum of lengths,) int64,
        targets (n, 1) f32."""
        size = self.batch_size(index)
        plan = self._plans(size)
        if index in self._ahead:
            return self._ahead.pop(index)
        if plan.group == 1:
            return plan.draw(derive_key(self.seed, self.stream, index))
        # planted labels at small batches: this batch and the next ones of its size, in one
        # pass (their content is the same: each sample's label depends on the sample only)
        stop = min(index + plan.group, self.num_batches)
        group = [i for i in range(index, stop) if self.batch_size(i) == size]
        raws = plan.draw_group([derive_key(self.seed, self.stream, i) for i in group])
        self._ahead = dict(zip(group[1:], raws[1:]))
        return raws[0]
