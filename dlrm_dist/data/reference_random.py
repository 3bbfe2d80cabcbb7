"""The reference's random data (`--data-generation random`), bit for bit, vectorized.

The reference draws, per batch and from one numpy stream: dense `rand(n, m_den)`, then
for each table and each sample a bag size (`random(1)`, unless fixed) and that many
indices (`random(k)` or `normal(mu, sigma, k)`), deduplicated per bag with `np.unique`,
then targets `rand(n, 1)`. It reseeds the stream at batch 0 of every pass.

For `uniform`, every draw is one double of the stream, so we draw a worst-case block at
once, find where each bag's size draw sits by path doubling over the block
(`next = here + 1 + bag size`), gather all bags of all tables as padded rows and dedup
them with one row-wise sort. The stream is then advanced by exactly what the
reference consumed. `gaussian` goes through numpy's stateful normal sampler (its cached
second deviate spans calls), so only its fixed-size mode is a single call; its random-size
mode keeps a scalar loop over bags, and the dedup is vectorized in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dlrm_dist.arch import feature_names
from dlrm_dist.data.batch_source import BatchSource, RawBatch, epoch_size, to_batch

if TYPE_CHECKING:
    from torchrec.datasets.utils import Batch


@dataclass(frozen=True)
class RandomDataSpec:
    """What one random batch looks like; mirrors the reference's generator arguments."""

    dense_features: int
    table_sizes: tuple[int, ...]
    num_indices_per_lookup: int = 10
    fixed: bool = False
    dist: str = "uniform"
    rmin: float = 0.0
    rmax: float = 1.0
    mu: float = -1.0
    sigma: float = 1.0
    round_targets: bool = False


def draw_batch(rs: np.random.RandomState, spec: RandomDataSpec, n: int) -> RawBatch:
    """Draw one batch of n samples from rs, consuming it exactly as the reference does."""
    if spec.dist == "uniform":
        return _draw_uniform(rs, spec, n)
    if spec.dist == "gaussian":
        return _draw_gaussian(rs, spec, n)
    raise ValueError(f"rand_data_dist {spec.dist!r} is not supported; use uniform or gaussian")


def _targets(u: np.ndarray, round_targets: bool) -> np.ndarray:
    t = u.astype(np.float32)
    return np.round(t).astype(np.float32) if round_targets else t


_PAD = np.iinfo(np.int64).max


def _draw_uniform(rs: np.random.RandomState, spec: RandomDataSpec, n: int) -> RawBatch:
    nipl, m_den = spec.num_indices_per_lookup, spec.dense_features
    sizes = np.asarray(spec.table_sizes, dtype=np.int64)
    caps = np.minimum(sizes, nipl)
    rows = sizes.size * n  # one row per (table, sample) bag
    sparse_worst = rows * nipl if spec.fixed else n * int((1 + caps).sum())
    worst = n * m_den + sparse_worst + n
    state = rs.get_state()
    u = rs.random_sample(worst)
    dense = u[: n * m_den].reshape(n, m_den).astype(np.float32)
    cur = n * m_den
    if spec.fixed:
        vals = u[cur : cur + rows * nipl].reshape(rows, nipl)
        valid = None
        cur += rows * nipl
    else:
        width = int(caps.max())
        vals = np.zeros((rows, width))
        ks = np.empty(rows, dtype=np.int64)
        t = 0
        while t < sizes.size:  # consecutive tables with the same cap share one chain
            end = t
            while end < sizes.size and caps[end] == caps[t]:
                end += 1
            cap = int(caps[t])
            block = u[cur : cur + (end - t) * n * (1 + cap)]
            pos, k = _bag_starts(block, cap, (end - t) * n)
            ks[t * n : end * n] = k
            take = np.minimum(pos[:, None] + 1 + np.arange(width), block.size - 1)
            vals[t * n : end * n] = block[take]
            cur += int(pos[-1] + 1 + k[-1])
            t = end
        valid = np.arange(width) < ks[:, None]
    idx = np.round(vals * (np.repeat(sizes, n)[:, None] - 1)).astype(np.int64)
    if valid is not None:
        idx[~valid] = _PAD
    lengths, values = _dedup_rows(idx)
    targets = _targets(u[cur : cur + n].reshape(n, 1), spec.round_targets)
    cur += n
    if cur < worst:  # rewind, then advance by exactly what the reference consumed
        rs.set_state(state)
        rs.random_sample(cur)
    return RawBatch(dense, lengths.reshape(sizes.size, n), values, targets)


def _dedup_rows(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row is one bag padded with _PAD: its sorted unique indices (the reference's
    per-bag np.unique), for all bags at once. Returns lengths (rows,), values."""
    idx.sort(axis=1)
    keep = idx != _PAD
    keep[:, 1:] &= idx[:, 1:] != idx[:, :-1]
    return keep.sum(axis=1).astype(np.int64), idx[keep]


def _bag_sizes(r: np.ndarray, cap: int) -> np.ndarray:
    """The reference's `round(max(1, r * min(size, nipl)))`, elementwise."""
    return np.rint(np.maximum(1.0, r * cap)).astype(np.int64)


def _bag_starts(block: np.ndarray, cap: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions in block of the n bag-size draws, and the n bag sizes.

    If a size draw sat at p, the next one sits at jump[p] = p + 1 + size(block[p]). The
    chain from 0 is built by path doubling: with the first m positions known and J the
    m-step jump, the next m are J[first m]; then J becomes J[J]. log2(n) gathers.
    """
    length = block.size
    sizes = _bag_sizes(block, cap)
    jump = np.empty(length + 1, dtype=np.int64)
    np.minimum(np.arange(1, length + 1) + sizes, length, out=jump[:length])
    jump[length] = length
    pos = np.zeros(1, dtype=np.int64)
    while pos.size < n:
        pos = np.concatenate((pos, jump[pos]))
        if pos.size < n:
            jump = jump[jump]
    pos = pos[:n]
    return pos, sizes[pos]


def _draw_gaussian(rs: np.random.RandomState, spec: RandomDataSpec, n: int) -> RawBatch:
    nipl = spec.num_indices_per_lookup
    mu = (spec.rmax + spec.rmin) / 2.0 if spec.mu == -1 else spec.mu
    dense = rs.rand(n, spec.dense_features).astype(np.float32)
    lengths, values = [], []
    for size in spec.table_sizes:
        if spec.fixed:
            ks = np.full(n, nipl, dtype=np.int64)
            vals = rs.normal(mu, spec.sigma, n * nipl)
        else:
            cap = min(size, nipl)
            ks = np.empty(n, dtype=np.int64)
            parts = []
            for i in range(n):  # the sampler's cached deviate spans calls: keep the order
                ks[i] = int(np.rint(max(1.0, rs.random_sample() * cap)))
                parts.append(rs.normal(mu, spec.sigma, ks[i]))
            vals = np.concatenate(parts)
        seg = np.repeat(np.arange(n), ks)
        vals = np.clip(vals, spec.rmin, spec.rmax)
        # the reference dedups the floats, then truncates: equal ints can survive
        order = np.lexsort((vals, seg))
        seg, vals = seg[order], vals[order]
        keep = np.ones(seg.size, dtype=bool)
        keep[1:] = (seg[1:] != seg[:-1]) | (vals[1:] != vals[:-1])
        lengths.append(np.bincount(seg[keep], minlength=n).astype(np.int64))
        values.append(vals[keep].astype(np.int64))
    targets = _targets(rs.rand(n, 1), spec.round_targets)
    return RawBatch(dense, np.stack(lengths), np.concatenate(values), targets)


class ReferenceRandomData(BatchSource):
    """The reference's RandomDataset + DataLoader: `len()` batches, reseeded at batch 0.

    `rs` is shared with whatever else draws from the reference's global stream (weight
    init, the evaluation data), so their interleaving matches the reference. Under
    several ranks every rank draws the whole global batch (the stream is sequential)
    and iterates over its own contiguous slice. So batches come right only in order:
    `iter_from(start)` continues mid-epoch, but past batch 0 nothing reseeds, and rs must
    already hold the state the reference's stream had there (the checkpoint restores it).

    `draw_ahead()` starts a worker process that draws each next batch while this one
    trains (dlrm_dist.data.draw_ahead): the same batches and stream states; `close()`
    ends it.
    """

    def __init__(
        self,
        spec: RandomDataSpec,
        rs: np.random.RandomState,
        seed: int,
        data_size: int,
        num_batches: int,
        mini_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        keys = feature_names(len(spec.table_sizes))
        epoch = epoch_size(num_batches, data_size, mini_batch_size)
        super().__init__(keys, mini_batch_size, *epoch, rank, world_size)
        self.spec, self.rs, self.seed = spec, rs, seed
        self._args = (spec, seed, data_size, num_batches, mini_batch_size, rank, world_size)
        self.ahead = None  # a DrawAhead while draw_ahead() is on
        # uniform ids are round(u * (rows - 1)) of u in [0, 1), dense rand(): in range; a
        # gaussian id is a deviate clipped to [rmin, rmax], in range only if those are
        self.in_range = spec.dist == "uniform"

    def draw_ahead(self) -> None:
        """Draw each next batch in a worker process from here on (until close())."""
        from dlrm_dist.data.draw_ahead import DrawAhead

        if self.ahead is None:
            spec, seed, *rest = self._args
            args = (spec, np.random.RandomState(), seed, *rest)
            uniform = spec.dist == "uniform"  # its draws read no cached normal deviate
            self.ahead = DrawAhead((ReferenceRandomData, args), len(self), in_place=uniform)

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead.close()
            self.ahead = None

    def raw(self, index: int) -> RawBatch:
        """The whole global batch `index`, the next draws of rs (reseeded at batch 0)."""
        if index == 0:
            self.rs.seed(self.seed)
        return draw_batch(self.rs, self.spec, self.batch_size(index))

    def local_raw(self, index: int) -> RawBatch:
        """This rank's slice of global batch `index`, drawn whole (see the class docstring)."""
        raw = self.raw(index)
        if self.world_size > 1:
            n = raw.targets.shape[0] // self.world_size
            raw = raw.slice(self.rank * n, (self.rank + 1) * n)
        return raw

    def batch(self, index: int) -> Batch:
        """local_raw(index) as a Batch, drawn by the worker when draw_ahead() is on."""
        if self.ahead is None:
            return to_batch(self.local_raw(index), self.keys)
        return to_batch(self.ahead.take(index, self.rs, self.local_raw), self.keys)
