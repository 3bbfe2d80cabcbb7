"""`--data-generation random-fast`: synthetic data that each rank draws only its slice of.

The reference generator (`reference_random`) walks one sequential numpy stream, so every
rank must draw the whole global batch to find its own part. Here every random number is a
counter-based hash instead: a pure function of (seed, stream, batch, domain, global sample,
draw slot), so any contiguous range of samples of any batch can be drawn alone, and
concatenating the slices of ranks 0..W-1 gives the same global batch for every W.

The hash is splitmix64 (Steele et al. 2014; its finalizer is a murmur3-style mixer) applied
to `key(seed, stream, batch) + G * counter`, G the golden-ratio increment, computed
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
when round_targets.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from torchrec.datasets.utils import Batch

from dlrm_dist.data.reference_random import RawBatch, feature_names, to_batch

DISTRIBUTIONS = ("uniform", "gaussian", "zipf")

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_DOMAIN_SHIFT = 40  # local counters stay below 2^40 (checked in _Plan)
_ZIPF_HEAD = 1024  # ranks drawn from the exact discrete CDF
_ZIPF_MAX_ROWS = 1 << 31  # a_t * rank stays inside int64
_F32_UNIT = np.float32(2.0**-24)
_F64_UNIT = 2.0**-53
_U32_UNIT = 2.0**-32
_BLOCK = 16384  # index draws hashed and converted per block, to stay in the L2 cache


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


def _validate(spec: FastDataSpec) -> None:
    if spec.dist not in DISTRIBUTIONS:
        raise ValueError(
            f"rand_data_dist {spec.dist!r} is not supported; use uniform, gaussian or zipf"
        )
    if not spec.table_sizes or min(spec.table_sizes) < 1:
        raise ValueError("table_sizes needs at least one table, each with >= 1 row")
    if spec.num_indices_per_lookup < 1:
        raise ValueError("num_indices_per_lookup must be at least 1")
    if spec.multi_hot_sizes and (
        len(spec.multi_hot_sizes) != len(spec.table_sizes) or min(spec.multi_hot_sizes) < 1
    ):
        raise ValueError(
            f"multi_hot_sizes needs one positive size per table ({len(spec.table_sizes)}), "
            f"got {spec.multi_hot_sizes}"
        )
    if spec.dist == "zipf":
        if spec.zipf_exponent <= 0:
            raise ValueError("zipf_exponent must be positive")
        if max(spec.table_sizes) > _ZIPF_MAX_ROWS:
            raise ValueError("zipf supports tables of at most 2^31 rows; shrink the largest")


def _mix64(x: int) -> int:
    """splitmix64's finalizer on a Python int: a bijection of 64-bit words."""
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _batch_key(seed: int, stream: int, batch: int) -> int:
    return _mix64(_mix64(_mix64(seed + _GOLDEN) ^ (stream & _M64)) + (batch & _M64) * _GOLDEN)


def _hash(state: np.ndarray, key: int, out: np.ndarray | None = None) -> np.ndarray:
    """splitmix64 outputs for the states `state + key` (state holds G * counter); into out
    (same shape) when given, else a new array."""
    z = np.add(state, np.uint64(key), out=out)
    tmp = np.empty_like(z)
    np.right_shift(z, 30, out=tmp)
    z ^= tmp
    z *= _C1
    np.right_shift(z, 27, out=tmp)
    z ^= tmp
    z *= _C2
    np.right_shift(z, 31, out=tmp)
    z ^= tmp
    return z


def _unit64(z: np.ndarray) -> np.ndarray:
    """Doubles in [0, 1) from the top 53 bits."""
    u = (z >> 11).astype(np.float64)
    u *= _F64_UNIT
    return u


def _unit32(z: np.ndarray) -> np.ndarray:
    """float32 in [0, 1) from the top 24 bits (exact, so never rounds up to 1)."""
    u = (z >> 40).astype(np.float32)
    u *= _F32_UNIT
    return u


def _weyl(domain: int, local: np.ndarray) -> np.ndarray:
    """G * ((domain << 40) + local) mod 2^64, the counter part of splitmix64's state."""
    ctr = local.astype(np.uint64) + np.uint64(domain << _DOMAIN_SHIFT)
    return ctr * np.uint64(_GOLDEN)


class _Zipf:
    """Per-table constants of the zipf sampler (see the module docstring)."""

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
        key = _mix64(seed ^ 0x5A1F)
        self.shift = np.asarray(
            [_mix64(key + t) % n for t, n in enumerate(rows.tolist())], dtype=np.int64
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
        _validate(spec)
        self.spec, self.n = spec, stop - start
        n, m, nt = self.n, spec.dense_features, len(spec.table_sizes)
        widths = np.asarray(spec.bag_widths(), dtype=np.int64)
        if stop * max(int(widths.max()), m, 1) >= 1 << _DOMAIN_SHIFT:
            raise ValueError(f"batch of {stop} samples is too large for random-fast; shrink it")
        samples = np.arange(start, stop, dtype=np.int64)
        parts = [_weyl(0, (samples[:, None] * m + np.arange(m)).reshape(-1)), _weyl(1, samples)]
        self.dense_end, self.targets_end = n * m, n * m + n
        # bag b = (t, i) owns slots (domain 3 + 2t, i * w_t + j), j < w_t
        bag_base = [_weyl(3 + 2 * t, samples * w) for t, w in enumerate(widths.tolist())]
        rows = np.asarray(spec.table_sizes, dtype=np.int64)
        self.scale = (rows - 1).astype(np.float64) * _F64_UNIT  # uniform: u53 -> index
        if spec.random_bags:
            parts += [_weyl(2 + 2 * t, samples) for t in range(nt)]
            self.bag_base = np.concatenate(bag_base)  # (F * n,)
            self.caps = np.repeat(widths * _F64_UNIT, n)  # (F * n,) cap * 2^-53
            self.slot_state = np.arange(n * widths.sum(), dtype=np.uint64) * np.uint64(_GOLDEN)
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
        self.zipf = _Zipf(spec, seed) if spec.dist == "zipf" else None
        self.mu = (spec.rmax + spec.rmin) / 2.0 if spec.mu == -1 else spec.mu

    def draw(self, key: int) -> RawBatch:
        spec, n = self.spec, self.n
        z = _hash(self.state, key)
        floats = _unit32(z[: self.targets_end])
        dense = floats[: self.dense_end].reshape(n, spec.dense_features)
        targets = floats[self.dense_end :].reshape(n, 1)
        if spec.round_targets:
            np.round(targets, out=targets)
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
        size = min(state.size, _BLOCK)
        z, u = np.empty(size, dtype=np.uint64), np.empty(size, dtype=np.float64)
        for lo in range(0, state.size, _BLOCK):
            hi = min(lo + _BLOCK, state.size)
            zb = _hash(state[lo:hi], key, out=z[: hi - lo])
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
            u1 = (z >> 32).astype(np.float64) * _U32_UNIT
            u2 = (z & np.uint64(0xFFFFFFFF)).astype(np.float64) * _U32_UNIT
            normal = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
            x = np.clip(self.mu + spec.sigma * normal, spec.rmin, spec.rmax)
            return x.astype(np.int64)
        assert self.zipf is not None and table is not None
        return self.zipf.rows_of(self.zipf.ranks(_unit64(z), table), table)


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
    return _plan(spec, seed, start, stop).draw(_batch_key(seed, stream, batch))


def local_bounds(global_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's contiguous [start, stop) of a global batch of global_size samples."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size}): check RANK and WORLD_SIZE")
    if global_size % world_size:
        raise ValueError(
            f"a batch of {global_size} samples does not split evenly over {world_size} ranks: "
            f"make the batch size (and data_size's last partial batch) a multiple of {world_size}"
        )
    size = global_size // world_size
    return rank * size, (rank + 1) * size


class RandomFastData:
    """An epoch of random-fast batches, this rank's slice of each.

    `num_batches > 0` gives that many full batches; otherwise ceil(data_size /
    mini_batch_size), the last one partial, as `reference_random.ReferenceRandomData`.
    Every (global batch size, slice) is planned here, so a bad split of the full batch
    fails at once; a partial last batch the world size does not divide fails only if
    drawn (the trainer leaves it out: see train.usable_batches).
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
        self.spec, self.seed, self.stream = spec, seed, stream
        self.mini_batch_size = mini_batch_size
        if num_batches > 0:
            self.num_batches = num_batches
            self.data_size = num_batches * mini_batch_size
        else:
            self.num_batches = math.ceil(data_size / mini_batch_size)
            self.data_size = data_size
        self.keys = feature_names(len(spec.table_sizes))
        self.rank, self.world_size = rank, world_size
        self._plans: dict[int, _Plan] = {}  # per global batch size: full, partial last
        if self.num_batches > 0:
            self._plan(self.batch_size(0))
            last = self.batch_size(self.num_batches - 1)
            if last % world_size == 0:
                self._plan(last)

    def _plan(self, size: int) -> _Plan:
        if size not in self._plans:
            bounds = local_bounds(size, self.rank, self.world_size)
            self._plans[size] = _Plan(self.spec, self.seed, *bounds)
        return self._plans[size]

    def __len__(self) -> int:
        return self.num_batches

    def batch_size(self, index: int) -> int:
        """Global samples in batch `index`."""
        return min(self.mini_batch_size, self.data_size - index * self.mini_batch_size)

    def raw(self, index: int) -> RawBatch:
        """This rank's slice of global batch `index`, n = batch_size(index) / world_size
        samples: dense (n, m) f32, lengths (F, n) int64, values (sum of lengths,) int64,
        targets (n, 1) f32."""
        plan = self._plan(self.batch_size(index))
        return plan.draw(_batch_key(self.seed, self.stream, index))

    def __iter__(self) -> Iterator[Batch]:
        """TorchRec Batches: dense (n, m), KJT keyed feature_names(F), labels (n,)."""
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[Batch]:
        """Batches start, start + 1, ... (a resumed run): each depends only on its index."""
        for index in range(start, self.num_batches):
            yield to_batch(self.raw(index), self.keys)
