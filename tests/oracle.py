"""Ground-truth oracle: a plain PyTorch/numpy re-implementation of reference DLRM.

This module re-implements, independently and deliberately simply, the semantics of
the reference DLRM training script (facebookresearch/dlrm ``dlrm_s_pytorch.py``
together with ``dlrm_data_pytorch.py``) in its random-data mode on one CPU process.
Tests and benchmarks use it as the ground truth for ``dlrm_dist``.

The one intended deviation from the reference is that every random draw goes
through an explicit ``numpy.random.RandomState`` object (``rs``) instead of the
global ``np.random`` state.  ``RandomState(seed)`` produces exactly the stream of
``np.random.seed(seed)``, so results match the reference bit for bit as long as
the draws happen in the same order.  The draw order of the reference is:

1. model initialisation (embedding tables in table order, then the bottom MLP,
   then the top MLP; per linear layer the weight before the bias);
2. data: the dataset reseeds the stream with ``seed`` whenever batch 0 is
   fetched (every epoch), then draws each batch lazily, right before it is used.

Reference quirks that are reproduced on purpose (see the function docstrings):

* the number of lookups per bag is ``round(max(1, r * min(size, nipl)))`` with
  ``r ~ U[0, 1)``, drawn even for bags that end up deduplicated;
* uniform indices are deduplicated after the integer cast, Gaussian indices are
  deduplicated *before* the integer cast, so a Gaussian bag can hold repeated
  indices;
* targets are cast to float32 before ``np.round`` when ``round_targets``;
* the weighted BCE weights are a float64 tensor, so the ``wbce`` loss is reduced
  in float64;
* the learning-rate policy freezes at the last *computed* value outside the
  warmup and decay windows whenever ``num_decay > 0`` (so after warmup the rate
  stays at ``(W - 1) / W`` of the base rate until the decay starts);
* QR tables (``QREmbeddingBag``) draw their weights from torch's generator (which
  the reference seeds with the same seed), ``U(sqrt(1/n), 1)``: its
  ``reset_parameters`` passes ``sqrt(1/n)`` as the *lower* bound; they take nothing
  from the numpy stream;
* an MD table (``PrEmbeddingBag``) is an ``nn.EmbeddingBag`` re-drawn xavier-uniform
  from torch's generator, then overwritten from the numpy stream; its projection
  (bias-free ``nn.Linear``, xavier-uniform from torch's generator) is kept.
  Every module construction draws from torch's generator (``nn.EmbeddingBag``:
  ``normal_``; ``nn.Linear``: ``kaiming_uniform_``), which moves the stream for the
  tables after it.

Where the reference cannot run, the oracle does what the reference's code means:
MD tables at or below ``md_threshold`` rows keep ``m_spa`` (the reference builds
``nn.EmbeddingBag(n, <list of dims>)`` and fails); rounded MD dims are integers
(``pow_2_round`` returns floats, which ``nn.EmbeddingBag`` rejects).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

Batch = tuple[Tensor, list[Tensor], list[Tensor], Tensor]

__all__ = [
    "OracleDLRM",
    "OracleLRPolicy",
    "interaction_indices",
    "md_dims",
    "num_interaction_features",
    "oracle_train",
    "seed_style_batch",
    "seed_style_batches",
]


# --------------------------------------------------------------------------- data


def _bag_size(
    rs: np.random.RandomState, size: int, num_indices_per_lookup: int, fixed: bool
) -> int:
    """Number of raw lookups drawn for one bag (before deduplication)."""
    if fixed:
        return int(num_indices_per_lookup)
    r = float(rs.random(1)[0])
    return int(np.round(max(1.0, r * min(size, num_indices_per_lookup))))


def _bag_indices(
    rs: np.random.RandomState,
    size: int,
    k: int,
    dist: str,
    rmin: float,
    rmax: float,
    mu: float,
    sigma: float,
) -> np.ndarray:
    """Sorted indices of one bag, shape ``(<= k,)``, dtype int64."""
    if dist == "uniform":
        raw = np.round(rs.random(k) * (size - 1)).astype(np.int64)
        return np.unique(raw)
    if dist == "gaussian":
        centre = (rmax + rmin) / 2.0 if mu == -1 else mu
        samples = np.clip(rs.normal(centre, sigma, k), rmin, rmax)
        # Quirk kept from the reference: dedup on floats, *then* truncate to int,
        # so e.g. 1.2 and 1.7 both survive as index 1.
        return np.unique(samples).astype(np.int64)
    raise ValueError(f"unsupported distribution {dist!r}; use 'uniform' or 'gaussian'")


def seed_style_batch(
    rs: np.random.RandomState,
    m_den: int,
    ln_emb: Sequence[int],
    n: int,
    num_indices_per_lookup: int,
    fixed: bool,
    dist: str = "uniform",
    rmin: float = 0.0,
    rmax: float = 1.0,
    mu: float = -1.0,
    sigma: float = 1.0,
    round_targets: bool = False,
) -> Batch:
    """Draw one random mini-batch exactly like the reference generator.

    This is intentionally the reference's simple per-sample Python loop (it also
    serves as the "seed-style loop" baseline in benchmarks).

    Draw order: dense features ``rs.rand(n, m_den)``; then for each table, for
    each sample, the bag size (unless ``fixed``) followed by the bag's indices;
    finally the targets ``rs.rand(n, 1)``.

    Args:
        rs: random stream to draw from (advanced in place).
        m_den: number of dense features.
        ln_emb: number of rows of each embedding table.
        n: number of samples in the batch.
        num_indices_per_lookup: (maximum) number of lookups per bag.
        fixed: if true every bag draws exactly ``num_indices_per_lookup`` lookups.
        dist: ``"uniform"`` or ``"gaussian"`` index distribution.
        rmin, rmax, mu, sigma: Gaussian parameters (``mu == -1`` means the centre
            of ``[rmin, rmax]``); the samples are clipped to ``[rmin, rmax]``.
        round_targets: round the targets to 0/1.

    Returns:
        ``(X, offsets, indices, T)`` where ``X`` is float32 ``(n, m_den)``,
        ``offsets[t]`` is int64 ``(n,)`` with the start of each bag of table
        ``t`` in ``indices[t]``, ``indices[t]`` is int64 ``(total lookups of t,)``
        and ``T`` is float32 ``(n, 1)``.
    """
    X = torch.tensor(rs.rand(n, m_den).astype(np.float32))

    offsets: list[Tensor] = []
    indices: list[Tensor] = []
    for size in ln_emb:
        table_offsets: list[int] = []
        table_indices: list[int] = []
        start = 0
        for _ in range(n):
            k = _bag_size(rs, int(size), num_indices_per_lookup, fixed)
            bag = _bag_indices(rs, int(size), k, dist, rmin, rmax, mu, sigma)
            table_offsets.append(start)
            table_indices.extend(int(i) for i in bag)
            start += int(bag.size)
        offsets.append(torch.tensor(table_offsets, dtype=torch.int64))
        indices.append(torch.tensor(table_indices, dtype=torch.int64))

    targets = rs.rand(n, 1).astype(np.float32)
    if round_targets:
        targets = np.round(targets).astype(np.float32)
    T = torch.tensor(targets)
    return X, offsets, indices, T


def seed_style_batches(
    rs: np.random.RandomState,
    seed: int,
    m_den: int,
    ln_emb: Sequence[int],
    data_size: int,
    num_batches: int,
    mini_batch_size: int,
    num_indices_per_lookup: int,
    fixed: bool,
    dist: str = "uniform",
    rmin: float = 0.0,
    rmax: float = 1.0,
    mu: float = -1.0,
    sigma: float = 1.0,
    round_targets: bool = False,
) -> Iterator[Batch]:
    """Lazily yield one epoch of batches like the reference dataset + loader.

    ``nbatches = ceil(data_size / mini_batch_size)``, unless ``num_batches != 0``
    in which case ``nbatches = num_batches`` and ``data_size`` becomes
    ``num_batches * mini_batch_size``.  Batch ``i`` has
    ``min(mini_batch_size, data_size - i * mini_batch_size)`` samples.  Before
    drawing batch 0 the stream is reseeded with ``rs.seed(seed)`` (the
    reference's ``reset_seed_on_access``).  Each batch is drawn only when the
    consumer asks for it, so draws made from ``rs`` between batches interleave
    exactly as in the reference.

    Yields:
        ``(X, offsets, indices, T)`` as returned by :func:`seed_style_batch`.
    """
    nbatches = int(np.ceil((data_size * 1.0) / mini_batch_size))
    if num_batches != 0:
        nbatches = num_batches
        data_size = nbatches * mini_batch_size
    for i in range(nbatches):
        if i == 0:
            rs.seed(seed)
        n = min(mini_batch_size, data_size - i * mini_batch_size)
        yield seed_style_batch(
            rs,
            m_den,
            ln_emb,
            n,
            num_indices_per_lookup,
            fixed,
            dist=dist,
            rmin=rmin,
            rmax=rmax,
            mu=mu,
            sigma=sigma,
            round_targets=round_targets,
        )


# ------------------------------------------------------------------- Criteo data
#
# The reference's Criteo path (data_utils.getCriteoAdData / processCriteoAdData /
# concatCriteoAdData, dlrm_data_pytorch.CriteoDataset and its collate), written from its
# definition as plainly as possible: Python dicts, per-line loops, scalar redraws.


def oracle_criteo_days(paths: Sequence[Any], kaggle: bool) -> list[list[str]]:
    """Each day's raw lines as the reference reads them: text mode (universal newlines, so
    CRLF reads as LF); Kaggle's one file cut into 7 days by line count, the first
    ``total % 7`` days one line longer; Terabyte: one file per day."""
    files = []
    for path in paths:
        with open(path) as fh:
            files.append(list(fh))
    if not kaggle:
        return files
    lines = files[0]
    per, extras = divmod(len(lines), 7)
    sizes = [per + (1 if d < extras else 0) for d in range(7)]
    starts = np.cumsum([0, *sizes])
    return [lines[starts[d] : starts[d + 1]] for d in range(7)]


def oracle_criteo_preprocess(days: Sequence[Sequence[str]], max_ind_range: int = -1) -> dict:
    """Ids as the reference numbers them: one dict per feature filled with each line's
    value (hex, ``% max_ind_range`` when > 0) day by day, line by line; then the keys are
    numbered in the dict's (insertion) order. Empty fields are "0"; negative integers
    become 0. Returns X_int (N, 13) int64, X_cat (N, 26) int64 ids, y (N,) int64 (all
    days concatenated), counts (26 table sizes) and day_rows."""
    dicts: list[dict[int, int]] = [{} for _ in range(26)]
    y, X_int, raw = [], [], []
    for lines in days:
        for line in lines:
            fields = ["0" if f in ("", "\n") else f for f in line.split("\t")]
            y.append(int(fields[0]))
            X_int.append([max(int(x), 0) for x in fields[1:14]])
            values = [int(x, 16) for x in fields[14:]]
            if max_ind_range > 0:
                values = [v % max_ind_range for v in values]
            raw.append(values)
            for j in range(26):
                dicts[j][values[j]] = 1
    for j in range(26):
        for i, x in enumerate(list(dicts[j])):
            dicts[j][x] = i
    X_cat = [[dicts[j][v] for j, v in enumerate(values)] for values in raw]
    return {
        "X_int": np.array(X_int, dtype=np.int64).reshape(-1, 13),
        "X_cat": np.array(X_cat, dtype=np.int64).reshape(-1, 26),
        "y": np.array(y, dtype=np.int64),
        "counts": [len(d) for d in dicts],
        "day_rows": [len(lines) for lines in days],
    }


def oracle_criteo_order(
    rs: np.random.RandomState, day_rows: Sequence[int], randomize: str, memory_map: bool
) -> np.ndarray:
    """The training rows (numbered over the concatenated days) in the order the reference
    trains on them, drawing from rs what it draws.

    Without memory_map: the train dataset and then the test dataset are built, and each
    build splits the row indices at the day boundaries, permutes every training day
    (``day``) or the concatenated training indices (``total``) with
    ``np.random.permutation``. With memory_map: the reordered days of
    ``concatCriteoAdData`` (:func:`_oracle_reordered`)."""
    if memory_map:
        return _oracle_reordered(rs, day_rows, randomize)
    offsets = np.cumsum([0, *day_rows])
    order = np.empty(0, dtype=np.int64)
    for split in ("train", "test"):
        indices = np.array_split(np.arange(offsets[-1]), offsets[1:-1])
        if randomize == "day":
            for i in range(len(indices) - 1):
                indices[i] = rs.permutation(indices[i])
        train = np.concatenate(indices[:-1])
        if randomize == "total":
            train = rs.permutation(train)
        if split == "train":
            order = train
    return order


def _oracle_reordered(rs: np.random.RandomState, day_rows: Sequence[int], randomize: str):
    """The reference's reordering for --memory-map, row by row. Pass 1 (``total``): each
    day i draws ``randint(0, days - 1)`` per row; a training day's row goes to that bucket,
    drawing a scalar again while the bucket is full (buckets hold the training days'
    sizes); the last day stays in its bucket. Pass 2: every training bucket is permuted
    (``permutation(range(size))``), in order; training reads the buckets in turn."""
    days = len(day_rows)
    offsets = np.cumsum([0, *day_rows])
    total_counter = [0] * days
    inter: list[list[int]] = [[] for _ in range(days)]
    for i in range(days):
        size = day_rows[i]
        buckets: list[list[int]] = [[] for _ in range(days)]
        counter = [0] * days
        if randomize == "total":
            rand_u = rs.randint(low=0, high=days - 1, size=size)
            for k in range(size):
                if i < days - 1:
                    p = int(rand_u[k])
                    while total_counter[p] + counter[p] >= day_rows[p]:
                        p = rs.randint(low=0, high=days - 1)
                else:
                    p = i
                buckets[p].append(k)
                counter[p] += 1
        else:
            buckets[i] = list(range(size))
            counter[i] = size
        for j in range(days):
            inter[j].extend(int(offsets[i]) + k for k in buckets[j])
            total_counter[j] += counter[j]
    order: list[int] = []
    for j in range(days - 1):
        indices: Any = range(day_rows[j])
        if randomize in ("day", "total"):
            indices = rs.permutation(range(day_rows[j]))
        order.extend(inter[j][q] for q in indices)
    return np.array(order, dtype=np.int64)


def oracle_criteo_batches(
    data: dict, order: np.ndarray, mini_batch_size: int, num_batches: int = 0
) -> Iterator[Batch]:
    """One epoch of the reference's training batches over ``order`` (DataLoader without
    shuffle, ``drop_last=False``; its collate: ``log(x + 1)`` of the float32 integers in
    torch, one id per bag, float32 targets (B, 1)); at most num_batches when > 0."""
    nbatches = math.ceil(order.size / mini_batch_size)
    if num_batches > 0:
        nbatches = min(nbatches, num_batches)
    for b in range(nbatches):
        rows = order[b * mini_batch_size : (b + 1) * mini_batch_size]
        X = torch.log(torch.tensor(data["X_int"][rows], dtype=torch.float) + 1)
        ids = torch.tensor(data["X_cat"][rows], dtype=torch.long)
        offsets = [torch.arange(rows.size) for _ in range(26)]
        T = torch.tensor(data["y"][rows], dtype=torch.float32).view(-1, 1)
        yield X, offsets, [ids[:, t] for t in range(26)], T


# -------------------------------------------------------------------------- model


def md_dims(ln_emb: Sequence[int], alpha: float, d0: int, round_dims: bool = False) -> list[int]:
    """The reference's ``md_solver(n, alpha, d0=d0, round_dim=round_dims)``: tables
    sorted by rows, ``d = d0 * n_0**alpha * n**-alpha`` in float32 (``d0`` for the
    smallest, at least 1 for the rest), rounded (half to even); optionally to the
    nearest power of two. Returned in table order."""
    n = torch.tensor([int(v) for v in ln_emb])
    n_sorted, indices = torch.sort(n)
    nf = n_sorted.type(torch.float)
    lamb = d0 * (nf[0] ** alpha)
    d = torch.ones(len(nf)) * lamb * (nf ** (-alpha))
    for i in range(len(d)):
        if i == 0:
            d[i] = d0
        elif d[i] < 1:
            d[i] = 1
    d = torch.round(d).type(torch.long)
    if round_dims:
        d = (2 ** torch.round(torch.log2(d.type(torch.float)))).type(torch.long)
    undo = [0] * len(indices)
    for i, v in enumerate(indices.tolist()):
        undo[v] = i
    return [int(x) for x in d[undo]]


class OracleQREmbeddingBag(nn.Module):
    """Quotient-remainder bag sums: index i reads row ``i // c`` of a
    ``(ceil(n / c), m)`` table and row ``i % c`` of a ``(c, m)`` table (computed as
    the reference does, ``(i / c).long()``); the two sums are concatenated
    (``(B, 2m)``), added or multiplied (``(B, m)``)."""

    def __init__(self, n: int, m: int, c: int, operation: str) -> None:
        super().__init__()
        self.c, self.operation = c, operation
        self.weight_q = nn.Parameter(torch.empty(int(np.ceil(n / c)), m))
        self.weight_r = nn.Parameter(torch.empty(c, m))
        nn.init.uniform_(self.weight_q, np.sqrt(1 / n))  # a = sqrt(1/n), b = 1
        nn.init.uniform_(self.weight_r, np.sqrt(1 / n))

    def forward(self, idx: Tensor, offsets: Tensor, per_sample_weights=None) -> Tensor:
        bag = torch.nn.functional.embedding_bag
        q = bag((idx / self.c).long(), self.weight_q, offsets, mode="sum", sparse=True)
        r = bag(
            torch.remainder(idx, self.c).long(), self.weight_r, offsets, mode="sum", sparse=True
        )
        if self.operation == "concat":
            return torch.cat((q, r), dim=1)
        return q + r if self.operation == "add" else q * r


class OracleMDEmbeddingBag(nn.Module):
    """A ``(n, d)`` bag sum projected to ``base`` by a bias-free linear map (none when
    ``d == base``)."""

    def __init__(self, n: int, d: int, base: int) -> None:
        super().__init__()
        self.embs = nn.EmbeddingBag(n, d, mode="sum", sparse=True)
        nn.init.xavier_uniform_(self.embs.weight)
        self.proj: nn.Module = nn.Identity()
        if d < base:
            self.proj = nn.Linear(d, base, bias=False)
            nn.init.xavier_uniform_(self.proj.weight)

    def forward(self, idx: Tensor, offsets: Tensor, per_sample_weights=None) -> Tensor:
        return self.proj(self.embs(idx, offsets, per_sample_weights=per_sample_weights))


def interaction_indices(num_features: int, itself: bool = False) -> tuple[list[int], list[int]]:
    """Row/column indices of the kept entries of the ``(F, F)`` Gram matrix.

    Strict lower triangle (or lower triangle with the diagonal if ``itself``),
    enumerated row by row: ``(1, 0), (2, 0), (2, 1), (3, 0), ...``.
    """
    extra = 1 if itself else 0
    rows: list[int] = []
    cols: list[int] = []
    for i in range(num_features):
        for j in range(i + extra):
            rows.append(i)
            cols.append(j)
    return rows, cols


def num_interaction_features(
    num_tables: int, bottom_out: int, interaction: str = "dot", itself: bool = False
) -> int:
    """Width of the top MLP input (the reference's ``num_int``).

    ``num_tables`` sparse features plus the dense one, each of width ``bottom_out``.
    """
    num_fea = num_tables + 1  # sparse features + the dense one
    if interaction == "dot":
        if itself:
            return num_fea * (num_fea + 1) // 2 + bottom_out
        return num_fea * (num_fea - 1) // 2 + bottom_out
    if interaction in ("cat", "dcn"):
        return num_fea * bottom_out
    raise ValueError(f"unsupported interaction {interaction!r}; use 'dot', 'cat' or 'dcn'")


def _make_mlp(
    rs: np.random.RandomState, widths: Sequence[int], sigmoid_last: bool
) -> nn.Sequential:
    """Linear layers ``widths[0] -> ... -> widths[-1]``, each followed by ReLU.

    If ``sigmoid_last`` the last activation is a Sigmoid instead.  Per layer the
    weight ``(out, in)`` is drawn from ``N(0, sqrt(2 / (out + in)))`` and then the
    bias ``(out,)`` from ``N(0, sqrt(1 / out))``.
    """
    layers: list[nn.Module] = []
    n_layers = len(widths) - 1
    for i in range(n_layers):
        n_in, n_out = int(widths[i]), int(widths[i + 1])
        linear = nn.Linear(n_in, n_out, bias=True)
        weight = rs.normal(0.0, math.sqrt(2 / (n_out + n_in)), size=(n_out, n_in)).astype(
            np.float32
        )
        bias = rs.normal(0.0, math.sqrt(1 / n_out), size=n_out).astype(np.float32)
        linear.weight.data = torch.tensor(weight)
        linear.bias.data = torch.tensor(bias)
        layers.append(linear)
        last = i == n_layers - 1
        layers.append(nn.Sigmoid() if (sigmoid_last and last) else nn.ReLU())
    return nn.Sequential(*layers)


class OracleDLRM(nn.Module):
    """Single-process reference DLRM (sum-pooled embeddings, MLPs, interaction).

    Parameters are created, and their initial values drawn from ``rs``, in the
    reference order: embedding tables (``U(-sqrt(1/n), sqrt(1/n))`` for an
    ``n``-row table), then the bottom MLP, then the top MLP.  ``parameters()``
    yields them in that same order.

    Args:
        rs: random stream for the initial values (advanced in place).
        m_spa: embedding dimension ``D`` (must equal ``ln_bot[-1]``).
        ln_emb: number of rows of each of the ``F`` tables.
        ln_bot: bottom MLP widths, ``ln_bot[0]`` = number of dense features.
        ln_top: full top MLP widths, ``ln_top[0]`` = interaction width.
        interaction: ``"dot"`` or ``"cat"``.
        interaction_itself: keep the Gram-matrix diagonal in ``"dot"``.
        loss_threshold: if in ``(0, 1)`` the output is clamped to
            ``[thr, 1 - thr]``.
        qr: ``(threshold, collisions, operation)``: tables of more rows than the
            threshold are quotient-remainder tables; ``None``: none.
        md: ``(threshold, alpha, round_dims)``: tables of more rows than the
            threshold get ``md_dims`` dims (``m_spa`` the widest) and a projection.
        weighted_pooling: ``None``, ``"fixed"`` or ``"learned"``: per-row weights
            (ones) multiply each index's row in the bag sums; learned ones are
            parameters, after the tables in ``parameters()``.

    Draws from torch's global generator too (module construction; QR and MD
    weights): seed it first, as the reference does.
    """

    def __init__(
        self,
        rs: np.random.RandomState,
        m_spa: int,
        ln_emb: Sequence[int],
        ln_bot: Sequence[int],
        ln_top: Sequence[int],
        interaction: str = "dot",
        interaction_itself: bool = False,
        loss_threshold: float = 0.0,
        dcn_num_layers: int = 0,
        dcn_low_rank_dim: int = 0,
        qr: tuple[int, int, str] | None = None,
        md: tuple[int, float, bool] | None = None,
        weighted_pooling: str | None = None,
    ) -> None:
        super().__init__()
        if interaction not in ("dot", "cat", "dcn"):
            raise ValueError(f"unsupported interaction {interaction!r}; use dot, cat or dcn")
        self.interaction = interaction
        self.interaction_itself = interaction_itself
        self.loss_threshold = loss_threshold

        dims = md_dims(ln_emb, md[1], m_spa, md[2]) if md else [m_spa] * len(ln_emb)
        tables: list[nn.Module] = []
        for i, n in enumerate(ln_emb):
            n = int(n)
            bound = math.sqrt(1 / n)
            if qr is not None and n > qr[0]:
                tables.append(OracleQREmbeddingBag(n, m_spa, qr[1], qr[2]))
                continue
            if md is not None and n > md[0]:
                bag = OracleMDEmbeddingBag(n, dims[i], max(dims))
                weight = rs.uniform(low=-bound, high=bound, size=(n, dims[i])).astype(np.float32)
                bag.embs.weight.data = torch.tensor(weight)
                tables.append(bag)
                continue
            bag = nn.EmbeddingBag(n, m_spa, mode="sum", sparse=True)
            weight = rs.uniform(low=-bound, high=bound, size=(n, m_spa)).astype(np.float32)
            bag.weight.data = torch.tensor(weight)
            tables.append(bag)
        self.emb_l = nn.ModuleList(tables)
        ones = [torch.ones(int(n), dtype=torch.float32) for n in ln_emb]
        self.v_W_l: list[Tensor | None] | nn.ParameterList = [None] * len(ln_emb)
        if weighted_pooling == "fixed":
            self.v_W_l = ones
        elif weighted_pooling == "learned":
            self.v_W_l = nn.ParameterList([nn.Parameter(w) for w in ones])
        self.bot_l = _make_mlp(rs, ln_bot, sigmoid_last=False)
        self.top_l = _make_mlp(rs, ln_top, sigmoid_last=True)
        # DCN v2 (Wang et al. 2020, low-rank form): N = (F + 1) D; per layer W (N, r),
        # V (r, N) drawn xavier-normal from rs after the MLPs (all W, then all V), b = 0
        n, r, layers = int(ln_top[0]), dcn_low_rank_dim, dcn_num_layers
        std = math.sqrt(2 / (n + r)) if r else 0.0

        def draw(shape: tuple[int, int]) -> nn.Parameter:
            return nn.Parameter(torch.tensor(rs.normal(0.0, std, size=shape).astype(np.float32)))

        self.dcn_w = nn.ParameterList([draw((n, r)) for _ in range(layers)])
        self.dcn_v = nn.ParameterList([draw((r, n)) for _ in range(layers)])
        self.dcn_b = nn.ParameterList([nn.Parameter(torch.zeros(n)) for _ in range(layers)])

    def interact(self, x: Tensor, embs: list[Tensor]) -> Tensor:
        """Combine the dense vector ``x`` (B, D) with ``F`` embeddings (B, D) each.

        ``"dot"``: ``(B, D + #pairs)`` = ``x`` followed by the selected entries of
        the per-sample Gram matrix of the ``F + 1`` feature vectors.
        ``"cat"``: ``(B, (F + 1) * D)`` concatenation.
        """
        if self.interaction == "cat":
            return torch.cat([x, *embs], dim=1)
        if self.interaction == "dcn":
            x0 = xl = torch.cat([x, *embs], dim=1)  # (B, N)
            for w, v, b in zip(self.dcn_w, self.dcn_v, self.dcn_b):
                xl = x0 * (xl @ v.t() @ w.t() + b) + xl
            return xl
        batch, dim = x.shape
        feats = torch.cat([x, *embs], dim=1).view(batch, -1, dim)  # (B, F+1, D)
        gram = torch.bmm(feats, feats.transpose(1, 2))  # (B, F+1, F+1)
        rows, cols = interaction_indices(gram.shape[1], self.interaction_itself)
        pairs = gram[
            :,
            torch.tensor(rows, dtype=torch.long),
            torch.tensor(cols, dtype=torch.long),
        ]
        return torch.cat([x, pairs], dim=1)

    def forward(
        self, X: Tensor, offsets: Sequence[Tensor] | Tensor, indices: Sequence[Tensor]
    ) -> Tensor:
        """Click probabilities ``(B, 1)`` for dense ``X`` (B, m_den) and bags.

        ``offsets[t]`` (B,) and ``indices[t]`` (nnz_t,) describe the bags of table
        ``t``; ``offsets`` may also be a stacked ``(F, B)`` tensor.
        """
        x = self.bot_l(X)
        embs = []
        for t, table in enumerate(self.emb_l):
            w = self.v_W_l[t]
            psw = None if w is None else w.gather(0, indices[t])
            embs.append(table(indices[t], offsets[t], per_sample_weights=psw))
        p = self.top_l(self.interact(x, embs))
        thr = self.loss_threshold
        if 0.0 < thr < 1.0:
            p = torch.clamp(p, min=thr, max=1.0 - thr)
        return p


# ---------------------------------------------------------------------- LR policy


class OracleLRPolicy(LRScheduler):
    """Reference DLRM learning-rate policy: linear warmup, then quadratic decay.

    With ``s = self._step_count`` (1 right after construction, because the base
    class ``__init__`` calls ``step()`` once; so the ``i``-th training iteration,
    counted from 0, runs with the rate computed for ``s = i + 1``):

    * ``s < W``: ``base * (1 - (W - s) / W)``;
    * ``D <= s < D + N``: ``max(1e-7, base * ((N - (s - D)) / N) ** 2)``;
    * otherwise: if ``N > 0`` the last rate computed by one of the two branches
      above (the base rate if none has been computed yet -- the reference would
      crash there), else the base rate.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        num_warmup_steps: int,
        decay_start_step: int,
        num_decay_steps: int,
    ) -> None:
        if decay_start_step < num_warmup_steps:
            raise ValueError("Learning rate warmup must finish before the decay starts")
        self.num_warmup_steps = num_warmup_steps
        self.decay_start_step = decay_start_step
        self.decay_end_step = decay_start_step + num_decay_steps
        self.num_decay_steps = num_decay_steps
        self.last_policy_lr: list[float] | None = None
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Rates for the current ``self._step_count`` (see the class docstring)."""
        step = self._step_count
        base_lrs = [float(b) for b in self.base_lrs]
        warmup = self.num_warmup_steps
        if step < warmup:
            scale = 1.0 - (warmup - step) / warmup
            self.last_policy_lr = [b * scale for b in base_lrs]
            return list(self.last_policy_lr)
        if self.decay_start_step <= step < self.decay_end_step:
            done = step - self.decay_start_step
            scale = ((self.num_decay_steps - done) / self.num_decay_steps) ** 2
            self.last_policy_lr = [max(1e-7, b * scale) for b in base_lrs]
            return list(self.last_policy_lr)
        if self.num_decay_steps > 0 and self.last_policy_lr is not None:
            return list(self.last_policy_lr)
        return base_lrs


# ----------------------------------------------------------------------- training


def oracle_train(
    *,
    seed: int,
    m_spa: int,
    ln_emb: Sequence[int],
    ln_bot: Sequence[int],
    ln_top_user: Sequence[int],
    interaction: str = "dot",
    interaction_itself: bool = False,
    dcn_num_layers: int = 0,
    dcn_low_rank_dim: int = 0,
    qr: tuple[int, int, str] | None = None,
    md: tuple[int, float, bool] | None = None,
    weighted_pooling: str | None = None,
    loss_function: str = "mse",
    loss_weights: Sequence[float] = (1.0, 1.0),
    loss_threshold: float = 0.0,
    learning_rate: float = 0.01,
    optimizer: str = "sgd",
    nepochs: int = 1,
    data_size: int,
    num_batches: int = 0,
    mini_batch_size: int,
    num_indices_per_lookup: int = 10,
    fixed: bool = False,
    dist: str = "uniform",
    rmin: float = 0.0,
    rmax: float = 1.0,
    mu: float = -1.0,
    sigma: float = 1.0,
    round_targets: bool = False,
    warmup: int = 0,
    decay_start: int = 0,
    num_decay: int = 0,
    criteo: dict | None = None,
) -> dict[str, list]:
    """Train like the reference script (random data, SGD, one CPU process).

    ``criteo``: train on Criteo data instead, ``oracle_criteo_preprocess``'s dict plus
    ``randomize`` and ``memory_map``: its shuffle is drawn from the stream first (the
    reference builds its datasets before the model), then the model; the batches are
    ``oracle_criteo_batches`` (``data_size`` and the random-data arguments are unused).

    ``ln_top_user`` is the user's top MLP without its input width; the
    interaction width is prepended as in the reference.

    Returns:
        ``{"losses": [float per iteration, all epochs in order],
        "lrs": [learning rate used by each iteration],
        "params": [np.ndarray final parameters in parameters() order],
        "init_params": [np.ndarray initial parameters],
        "step_seconds": time spent in the training steps, data generation excluded}``.
    """
    ln_emb = [int(v) for v in ln_emb]
    ln_bot = [int(v) for v in ln_bot]
    width = 2 * m_spa if qr is not None and qr[2] == "concat" else m_spa
    if width != ln_bot[-1]:
        raise ValueError(f"m_spa={m_spa} does not fit the last bottom MLP width {ln_bot[-1]}")
    num_int = num_interaction_features(len(ln_emb), ln_bot[-1], interaction, interaction_itself)
    ln_top = [num_int, *(int(v) for v in ln_top_user)]

    rs = np.random.RandomState(seed)
    torch.manual_seed(seed)  # the reference seeds torch's generator with the same seed
    if criteo is not None:
        order = oracle_criteo_order(
            rs, criteo["day_rows"], criteo["randomize"], criteo["memory_map"]
        )
    model = OracleDLRM(
        rs,
        m_spa,
        ln_emb,
        ln_bot,
        ln_top,
        interaction,
        interaction_itself,
        loss_threshold,
        dcn_num_layers,
        dcn_low_rank_dim,
        qr,
        md,
        weighted_pooling,
    )
    init_params = [p.detach().numpy().copy() for p in model.parameters()]

    if loss_function == "mse":
        loss_fn: nn.Module = nn.MSELoss(reduction="mean")
    elif loss_function in ("bce", "wbce"):
        loss_fn = nn.BCELoss(reduction="mean" if loss_function == "bce" else "none")
    else:
        raise ValueError(f"unsupported loss {loss_function!r}")
    # float64, as in the reference (np.fromstring(..., dtype=float)).
    weights = torch.tensor(np.asarray(loss_weights, dtype=np.float64))

    optimizers = oracle_optimizers(model, optimizer, learning_rate)
    schedulers = [OracleLRPolicy(o, warmup, decay_start, num_decay) for o in optimizers]

    losses: list[float] = []
    lrs: list[float] = []
    step_seconds = 0.0
    for _ in range(nepochs):
        if criteo is not None:
            batches = oracle_criteo_batches(criteo, order, mini_batch_size, num_batches)
        else:
            batches = seed_style_batches(
                rs,
                seed,
                ln_bot[0],
                ln_emb,
                data_size,
                num_batches,
                mini_batch_size,
                num_indices_per_lookup,
                fixed,
                dist=dist,
                rmin=rmin,
                rmax=rmax,
                mu=mu,
                sigma=sigma,
                round_targets=round_targets,
            )
        for X, offsets, indices, T in batches:
            start = time.perf_counter()
            lrs.append(float(optimizers[0].param_groups[0]["lr"]))
            for o in optimizers:
                o.zero_grad()
            Z = model(X, offsets, indices)
            if loss_function == "wbce":
                w = weights[T.view(-1).long()].view_as(T)
                E = (w * loss_fn(Z, T)).mean()
            else:
                E = loss_fn(Z, T)
            E.backward()
            for o, sched in zip(optimizers, schedulers):
                o.step()
                sched.step()
            losses.append(E.item())
            step_seconds += time.perf_counter() - start

    return {
        "losses": losses,
        "lrs": lrs,
        "params": [p.detach().numpy().copy() for p in model.parameters()],
        "init_params": init_params,
        "step_seconds": step_seconds,
    }


class OracleRWSAdagrad(Optimizer):
    """The reference's row-wise sparse Adagrad (`--optimizer rwsadagrad`), from its
    definition: a sparse gradient (an embedding table's) keeps one accumulator per row,
    summing the mean over the row of the squared gradient; a dense gradient (an MLP's)
    gets elementwise Adagrad. Update: w -= lr * g / (sqrt(acc) + eps)."""

    def __init__(self, params, lr: float = 1e-2, eps: float = 1e-10) -> None:
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if p.grad.is_sparse:
                    g = p.grad.coalesce()
                    rows, values = g.indices()[0], g.values()
                    acc = state.setdefault("row_sum", torch.zeros(p.shape[0]))
                    acc.index_add_(0, rows, values.pow(2).mean(dim=1))
                    std = acc[rows].sqrt() + eps
                    p.index_add_(0, rows, values / std[:, None], alpha=-lr)
                else:
                    acc = state.setdefault("sum", torch.zeros_like(p))
                    acc.addcmul_(p.grad, p.grad)
                    p.addcdiv_(p.grad, acc.sqrt() + eps, value=-lr)
        return None


def oracle_optimizers(model: OracleDLRM, name: str, lr: float) -> list[Optimizer]:
    """The reference's optimizer over all parameters (sgd, adagrad: torch's, which take
    sparse gradients; rwsadagrad); adam, which the reference lacks, as SparseAdam on the
    tables (lazy: only the rows a batch touches) plus Adam on the MLPs."""
    if name == "sgd":
        return [torch.optim.SGD(model.parameters(), lr=lr)]
    if name == "adagrad":
        return [torch.optim.Adagrad(model.parameters(), lr=lr)]
    if name == "rwsadagrad":
        return [OracleRWSAdagrad(model.parameters(), lr=lr)]
    if name == "adam":
        tables = [p for t in model.emb_l for n, p in t.named_parameters() if "proj" not in n]
        ids = {id(p) for p in tables}
        dense = [p for p in model.parameters() if id(p) not in ids]
        return [torch.optim.SparseAdam(tables, lr=lr), torch.optim.Adam(dense, lr=lr)]
    raise ValueError(f"unsupported optimizer {name!r}")


def seed_data_kwargs(cfg: Any) -> dict[str, Any]:
    """The data arguments of oracle_train / seed_style_batches for a dlrm_dist Config."""
    d = cfg.data
    return dict(
        data_size=d.data_size,
        num_batches=d.num_batches,
        mini_batch_size=d.mini_batch_size,
        num_indices_per_lookup=d.num_indices_per_lookup,
        fixed=d.num_indices_per_lookup_fixed,
        dist=d.rand_data_dist,
        rmin=d.rand_data_min,
        rmax=d.rand_data_max,
        mu=d.rand_data_mu,
        sigma=d.rand_data_sigma,
        round_targets=d.round_targets,
    )


def oracle_kwargs(cfg: Any) -> dict[str, Any]:
    """oracle_train's arguments for the run a dlrm_dist Config describes (read as plain
    attributes: the oracle uses none of dlrm_dist's code)."""
    m, o = cfg.model, cfg.optim
    return dict(
        seed=cfg.train.numpy_rand_seed,
        m_spa=m.sparse_feature_size,
        ln_emb=m.embedding_sizes,
        ln_bot=m.mlp_bot,
        ln_top_user=m.mlp_top,
        interaction=m.interaction,
        interaction_itself=m.interaction_itself,
        dcn_num_layers=m.dcn_num_layers if m.interaction == "dcn" else 0,
        dcn_low_rank_dim=m.dcn_low_rank_dim if m.interaction == "dcn" else 0,
        qr=(m.qr_threshold, m.qr_collisions, m.qr_operation) if m.qr_flag else None,
        md=(m.md_threshold, m.md_temperature, m.md_round_dims) if m.md_flag else None,
        weighted_pooling=m.weighted_pooling or None,
        loss_function=m.loss_function,
        loss_weights=m.loss_weights,
        loss_threshold=m.loss_threshold,
        learning_rate=o.learning_rate,
        optimizer=o.optimizer,
        nepochs=cfg.train.nepochs,
        warmup=o.lr_num_warmup_steps,
        decay_start=o.lr_decay_start_step,
        num_decay=o.lr_num_decay_steps,
        **seed_data_kwargs(cfg),
    )
