"""Planted labels (`--synthetic-labels planted`): random-fast clicks a model can learn.

With random 0/1 targets a trainer learns nothing (loss 0.693, AUC 0.5 throughout), so a run
cannot show that it works. Here each sample's click is drawn from a fixed, seeded "teacher"
over that sample's own dense features and ids, and the teacher's own AUC and log loss on the
test split are the best any model can reach there: a known answer to compare a change of
model, sharding or optimizer against.

The teacher, for a sample with dense features x (m,) and bags B_t of ids (F tables):

    logit = sum_{j < J} w_j (x_j - 1/2)                 J = min(m, 4), w = DENSE_WEIGHTS
          + TABLE_WEIGHT * sum_{t in MAIN} mean_{i in B_t} e_t(i)
          + PAIR_WEIGHT * mean_{i in B_a} e_a(i) * mean_{i in B_b} e_b(i)
    p     = sigmoid(logit rounded to a multiple of 1/GRID),  label = 1 if u < p else 0

MAIN = tables 0 .. k-1 and the pair (a, b) = (k, k + 1), k = min(3, F - 2): tables 0-2 carry
a per-row effect and tables 3 and 4 interact, so the interaction layer has a product of two
tables to find (with fewer tables MAIN shrinks: F = 2 is the pair alone, F = 1 table 0's
effect alone). Row i of table t has the effect e_t(i) = ((z >> 43) - 2^20) / 2^20, uniform
in [-1, 1), of one splitmix64 hash z = mix64(derive_key(seed, STREAM, t) + GOLDEN * i):
nothing of a table's size is held, so tables of 40M rows cost what small ones do. Bags
average their ids' effects (multi-hot, random bag sizes). u is the sample's target uniform
(what random labels would have been), so a label depends only on its sample: the batches
keep random-fast's every property (any rank draws any slice alone).

Bit for bit on every device (`random_fast_torch` computes the same): the bag sums are int64
(exact in any order); after them only IEEE +, -, *, / (correctly rounded, so numpy and torch
on CPU or CUDA round alike) in one fixed order, the dense part exactly (dyadic weights times
24-bit values), and the logit is rounded to the grid exactly. The sigmoid is a table over
the logit's whole range (|logit| < BOUND), computed once with those operations only
(`exp_neg`, within 1e-13 of exp) and copied to the device: no library exp, whose last bit
differs across libraries and could flip u < p.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from dlrm_dist.data.hashing import BLOCK, GOLDEN, derive_key, mix64_array

LABELS = ("random", "planted")
STREAM = 0x504C414E54  # "PLANT": derive_key's stream tag of the teacher's per-row hashes
DENSE_WEIGHTS = (1.0, -1.0, 1.0, -1.0)  # on the first dense features, centred (dyadic: exact)
TABLE_WEIGHT = 2.5  # on the bag mean of each MAIN table's effects
PAIR_WEIGHT = 9.0  # on the product of the pair's bag means
MAIN_TABLES = 3
EFFECT_BITS = 20  # e_t(i) = ((z >> 43) - 2^20) / 2^20: 21 signed bits
MAX_GROUP = 16  # at most this many batches labelled in one pass (Teacher.plant)
GRID = 4096  # the logit is rounded to a multiple of 1 / GRID (exactly) for the sigmoid table
# |logit| < BOUND for every sample (|e| <= 1): the sigmoid table's range, no clipping needed
BOUND = math.ceil(sum(map(abs, DENSE_WEIGHTS)) / 2 + MAIN_TABLES * TABLE_WEIGHT + PAIR_WEIGHT)
_GOLDEN_SIGNED = np.int64(GOLDEN - (1 << 64))  # the same bits: an int64 product wraps alike
TAYLOR = tuple(1.0 / math.factorial(k) for k in range(17, -1, -1))  # exp's, Horner order


def planted_tables(num_tables: int) -> tuple[tuple[int, ...], tuple[int, int] | None]:
    """(MAIN tables, interaction pair (a, b) or None) of a model with num_tables tables: the
    teacher reads tables 0 .. min(num_tables, 5) - 1 (MAIN first, then the pair)."""
    if num_tables < 2:
        return (0,), None
    k = min(MAIN_TABLES, num_tables - 2)
    return tuple(range(k)), (k, k + 1)


def exp_neg(x: np.ndarray) -> np.ndarray:
    """exp(-x) (L,) f64 for x (L,) in [0, BOUND], with +, *, / only (IEEE-rounded alike on
    every machine): Horner's rule for the degree-17 Taylor polynomial of exp(-x / 64), then
    squared 6 times; within 1e-13 relative of exp."""
    r = x / -64.0  # exact: a power of two
    acc = np.full_like(r, TAYLOR[0])
    for c in TAYLOR[1:]:
        acc = acc * r + c
    for _ in range(6):
        acc = acc * acc
    return acc


@functools.cache
def sigmoid_table() -> np.ndarray:
    """sigmoid(k / GRID) (2 BOUND GRID + 1,) f64 at row k for k = 0 .. BOUND GRID, and at
    row k + len for k = -BOUND GRID .. -1 (so a negative k indexes it as it is, in numpy
    and torch alike): the same bits on every machine (exp_neg), copied to a device."""
    top = BOUND * GRID
    logit = np.concatenate((np.arange(top + 1), np.arange(-top, 0))) / GRID
    e = exp_neg(np.abs(logit))
    return np.where(logit >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def grid_index(logit: np.ndarray) -> np.ndarray:
    """sigmoid_table's row k (L,) int64 of logits (L,) f64: rint(logit GRID), exact (GRID
    is a power of two), in [-BOUND GRID, BOUND GRID]."""
    return np.rint(logit * GRID).astype(np.int64)


def sigmoid(logit: np.ndarray) -> np.ndarray:
    """The teacher's click probability (L,) f64 of logits (L,): sigmoid of the logit
    rounded to the grid (1/4096 apart, far finer than any model's), read from the table."""
    return sigmoid_table()[grid_index(logit)]


class Teacher:
    """The seeded teacher of random-fast data with `dense_features` dense features and
    `num_tables` tables: its hash keys and the features it reads (module docstring).
    widths: every table's bag size when they are fixed (multi-hot or fixed bags), which
    lets it lay out each batch size's bags once; None: random bag sizes."""

    def __init__(
        self,
        dense_features: int,
        num_tables: int,
        seed: int,
        widths: tuple[int, ...] | None = None,
    ) -> None:
        self.main, self.pair = planted_tables(num_tables)
        self.dense_weights = np.asarray(DENSE_WEIGHTS[: min(dense_features, len(DENSE_WEIGHTS))])
        self.dense_offset = -0.5 * float(self.dense_weights.sum())  # exact: sum w_j (x_j - 1/2)
        self.used = min(num_tables, MAIN_TABLES + 2)  # tables 0 .. used - 1
        keys = [derive_key(seed, STREAM, t) for t in range(self.used)]
        self.keys = np.asarray(keys, dtype=np.uint64)  # (used,)
        # each table's weight on its bag mean of e * 2^20 (the pair's product: on a's only)
        scale = [TABLE_WEIGHT] * len(self.main) + [PAIR_WEIGHT, 1.0]
        self.scale = np.asarray(scale[: self.used]) * 2.0**-EFFECT_BITS  # (used,) f64
        self.widths = None if widths is None else np.asarray(widths[: self.used], dtype=np.int64)
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @classmethod
    def of(cls, spec, seed: int) -> Teacher:
        """The teacher of a random_fast.FastDataSpec under `seed`."""
        widths = None if spec.random_bags else spec.bag_widths()
        return cls(spec.dense_features, len(spec.table_sizes), seed, widths)

    def layout(self, group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the bags of tables 0 .. used - 1 of g batches, group (g, used, n): each id's
        table key (L,) uint64, each bag's first id (g * used * n,) and its sum's coefficient
        (g * used * n,) f64, its table's scale / its size. Fixed bags: made once per (g, n)."""
        g, _, n = group.shape
        if self.widths is not None and (g, n) in self._layouts:
            return self._layouts[g, n]
        flat = group.reshape(-1)
        keys = np.repeat(np.tile(self.keys, g), group.sum(axis=2).reshape(-1))
        out = keys, np.cumsum(flat) - flat, np.tile(np.repeat(self.scale, n), g) / flat
        if self.widths is not None:
            self._layouts[g, n] = out
        return out

    def logits(self, dense: np.ndarray, lengths: np.ndarray, values: np.ndarray) -> np.ndarray:
        """logit (n,) f64 of a batch: dense (n, m) f32, lengths (F, n) int64, values (sum of
        lengths,) int64 table-major (random_fast's RawBatch fields). Or of g batches at once
        (one pass of numpy calls for all, which at small batches cost more than the work):
        dense (g n, m) and lengths (g, used, n) stacked, values their tables 0 .. used - 1's
        ids, each batch's in turn; logit (g n,), batch after batch."""
        group = lengths[None, : self.used] if lengths.ndim == 2 else lengths
        keys, starts, coef = self.layout(group)
        z = np.multiply(values[: keys.size], _GOLDEN_SIGNED).view(np.uint64)
        z += keys  # GOLDEN * id + key (wrapping): the ids of tables 0 .. used - 1
        np.right_shift(mix64_array(z), np.uint64(64 - EFFECT_BITS - 1), out=z)
        e = z.view(np.int64)
        e -= 1 << EFFECT_BITS  # e * 2^20
        # bag sums: exact int64 in any order (random-fast bags are never empty)
        terms = (np.add.reduceat(e, starts) * coef).reshape(group.shape)
        if group.shape[0] > 1:  # (g, used, n) -> (used, g n): each table's, batch after batch
            terms = terms.transpose(1, 0, 2).reshape(self.used, -1)
        return combine(self, dense, terms.reshape(self.used, -1))

    def probabilities(self, dense, lengths, values) -> np.ndarray:
        """p (n,) f64: the click probability of each sample."""
        return sigmoid(self.logits(dense, lengths, values))

    def labels(self, dense, lengths, values, u: np.ndarray) -> np.ndarray:
        """Planted 0/1 targets (n, 1) f32 from the samples' uniforms u (n, 1) f32."""
        p = self.probabilities(dense, lengths, values)
        return (u < p[:, None]).astype(np.float32)

    def group_size(self, n: int) -> int:
        """How many batches of n samples to label in one pass (`plant`): enough for one
        pass to hash about BLOCK ids (at a batch of 128 a pass's ~30 numpy calls cost more
        than its work), 1 for large batches (MLPerf's: nothing to gain)."""
        ids = n * (self.used if self.widths is None else int(self.widths.sum()))
        return max(1, min(MAX_GROUP, BLOCK // max(ids, 1)))

    def plant(self, raws: list) -> None:
        """Replace the targets of the RawBatches `raws` (each n samples; their targets the
        uniforms u) with their planted clicks, in one pass for all: the labels are those of
        `labels` on each batch alone (each sample's depends on the sample only)."""
        if len(raws) == 1:
            (raw,) = raws
            raw.targets = self.labels(raw.dense, raw.lengths, raw.values, raw.targets)
            return
        j, n = self.dense_weights.size, raws[0].targets.shape[0]
        group = np.stack([raw.lengths[: self.used] for raw in raws])  # (g, used, n)
        ends = group.sum(axis=(1, 2)).tolist()
        values = np.concatenate([raw.values[:end] for raw, end in zip(raws, ends)])
        dense = np.concatenate([raw.dense[:, :j] for raw in raws])  # (g n, j)
        u = np.concatenate([raw.targets for raw in raws])  # (g n, 1)
        y = self.labels(dense, group, values, u)
        for k, raw in enumerate(raws):
            raw.targets = y[k * n : (k + 1) * n]


def combine(teacher: Teacher, dense: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """The logit (n,) f64 from dense (n, m) f32 and the weighted bag means (used, n) (MAIN's
    TABLE_WEIGHT * mean e, then PAIR_WEIGHT * mean e_a and mean e_b), in the one order
    random_fast_torch repeats. The dense part is exact: dyadic weights times 24-bit values,
    so any summation order (a matrix product's) gives the same bits."""
    logit = np.dot(dense[:, : teacher.dense_weights.size], teacher.dense_weights)  # x in f64
    if teacher.dense_offset:
        logit = logit + teacher.dense_offset
    for t in teacher.main:
        logit = logit + terms[t]
    if teacher.pair is not None:
        a, b = teacher.pair
        logit = logit + terms[a] * terms[b]
    return logit
