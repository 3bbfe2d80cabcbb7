"""`--data-generation dataset`: Criteo batches read from the processed, memory-mapped days.

Splits, as the reference (`dlrm_data_pytorch.CriteoDataset` and `data_utils`): the last day
is held out, every earlier day is training data; the last day's first half (ceil(n / 2)
rows) is `test`, its second half `val` (`np.array_split(last_day, 2)`). Kaggle: the 7
contiguous "days" preprocessing cut train.txt into (days 0-5 train, day 6 test/val);
Terabyte: days 0-22 train, day 23 test/val. The trainer evaluates on `test`, as the reference.

Shuffling (`--data-randomize`, training rows only, fixed for the run as in the reference):
`total` permutes all training rows, `day` permutes within each day (days stay in order), `none`
keeps the file order. `total` and `day` are the reference's permutations, drawn from its
seeded numpy stream (`rs`) when the split is built, as the reference's dataset draws them
(`criteo_shuffle`: without memory_map its in-memory dataset's, which every split's build
draws; with memory_map its reordered days', which the train split's build draws): the same
order, and the stream left where the reference leaves it for the initial weights. The order
is held whole on every rank (8 bytes a training row); each rank reads its slice of it.
`total-bijection` / `day-bijection` are ours, for data too large for that: a keyed bijection
of [0, n) (`hashing.Bijection`, a 4-round Feistel network on the next even power of two,
cycle-walking back into range), no memory, no draws from rs, any rank computes any batch's
rows alone; its orders are not the reference's.

Global batch b holds positions [b B, (b + 1) B) of the split's order; a rank reads only rows
[start, stop) of it (its contiguous slice, `batch_source.local_bounds`) from the memory maps, so
concatenating the ranks' slices gives the global batch for any world size. The last batch is
partial, like the other generators (the trainer leaves it out when the ranks cannot split it).

Multi-hot (`--multi-hot-sizes`): each rank expands the one-hot ids of its own slice into bags
of multi_hot_sizes[t] ids (`multi_hot.MultiHot`: the same id gives the same bag on every rank,
epoch and split), so the model and the planner see multi-hot KJTs; without sizes the batches
are the one-hot ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dlrm_dist.arch import feature_names
from dlrm_dist.config import choices
from dlrm_dist.data.batch_source import BatchSource, RawBatch, local_bounds
from dlrm_dist.data.criteo_files import load_meta, refuse_stale, stale_ids
from dlrm_dist.data.criteo_shuffle import in_memory_order, reordered_order
from dlrm_dist.data.criteo_tsv import NUM_DENSE, NUM_SPARSE
from dlrm_dist.data.hashing import Bijection, mix64
from dlrm_dist.data.multi_hot import MultiHot
from dlrm_dist.errors import ConfigError

SPLITS = ("train", "val", "test")
RANDOMIZE = choices("data", "data_randomize")  # total | day | none | *-bijection


class CriteoData(BatchSource):
    """One split of the processed Criteo data as batches, this rank's slice of each.

    `len()` = ceil(rows / mini_batch_size) (at most num_batches when > 0); `batch_size(i)`
    the global size of batch i; `raw(i)` this rank's slice as a RawBatch: dense (n, 13) f32,
    lengths (26, n) int64 (all ones; with multi_hot_sizes k, row t all k[t]), values
    (sum of lengths,) int64 table-major, targets (n, 1) f32; as TorchRec Batches (iteration),
    KJTs keyed cat_0..cat_25.

    rs: the reference's numpy stream, which `total` and `day` draw from when the split is
    built (see the module docstring); None: a fresh one seeded with `seed`. memory_map: the
    reference's --memory-map (its reordered days' shuffle).
    """

    def __init__(
        self,
        directory: str | Path,
        split: str,
        mini_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        randomize: str = "none",
        seed: int = 0,
        num_batches: int = 0,
        multi_hot_sizes: list[int] | tuple[int, ...] = (),
        multi_hot_distribution: str = "uniform",
        rs: np.random.RandomState | None = None,
        memory_map: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: use one of {', '.join(SPLITS)}")
        if randomize not in RANDOMIZE:
            raise ConfigError(f"--data-randomize={randomize}: use one of {' | '.join(RANDOMIZE)}")
        meta = load_meta(directory)
        if meta is None:
            raise ConfigError(f"{directory} holds no processed Criteo data (no meta.json)")
        if stale_ids(meta):
            raise refuse_stale(Path(directory), "preprocess it again (--raw-data-file)")
        self.dir = Path(directory)
        self.counts = list(meta["counts"])
        rows = [int(day["rows"]) for day in meta["days"]]
        last = len(rows) - 1
        half = math.ceil(rows[last] / 2)
        # the split as segments (day, first row, end row), in order
        if split == "train":
            segments = [(d, 0, rows[d]) for d in range(last)]
        elif split == "test":
            segments = [(last, 0, half)]
        else:
            segments = [(last, half, rows[last])]
        self.segments = [s for s in segments if s[2] > s[1]]
        sizes = [hi - lo for _, lo, hi in self.segments]
        self.starts = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))
        self.rows = int(self.starts[-1])
        full = math.ceil(self.rows / mini_batch_size)
        num_batches = min(full, num_batches) if num_batches > 0 else full
        keys = feature_names(NUM_SPARSE)
        super().__init__(keys, mini_batch_size, num_batches, self.rows, rank, world_size)
        self.randomize = randomize if split == "train" else "none"
        self.order = self._draw(rows, split, randomize, memory_map, rs, seed)
        self._perm_total = Bijection(self.rows, mix64(seed) ^ 0x7074)
        self._perm_day = [
            Bijection(n, mix64(seed) ^ (day + 1)) for (day, _, _), n in zip(self.segments, sizes)
        ]
        self._maps = [self._open(day) for day, _, _ in self.segments]
        self.multi_hot: MultiHot | None = None
        if multi_hot_sizes:
            try:
                self.multi_hot = MultiHot(
                    multi_hot_sizes, self.counts, multi_hot_distribution, seed
                )
            except ValueError as exc:
                raise ConfigError(f"--multi-hot-sizes: {exc}") from None

    def _open(self, day: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        arrays = []
        for what, width in (("dense", NUM_DENSE), ("sparse", NUM_SPARSE), ("labels", 1)):
            a = np.load(self.dir / f"day_{day}_{what}.npy", mmap_mode="r")
            if a.ndim != 2 or a.shape[1] != width:
                raise ConfigError(f"{self.dir}/day_{day}_{what}.npy has shape {a.shape}")
            arrays.append(a)
        return arrays[0], arrays[1], arrays[2]

    @staticmethod
    def _draw(rows, split, randomize, memory_map, rs, seed) -> np.ndarray | None:
        """The reference's order of the training rows (`total`, `day`), drawn from rs as the
        reference's dataset build draws it; the test and val splits draw it too without
        memory_map (and keep none), nothing with it (the reference reorders once)."""
        if randomize not in ("total", "day") or (memory_map and split != "train"):
            return None
        rs = np.random.RandomState(seed) if rs is None else rs
        if memory_map:
            order = reordered_order(rs, rows, randomize)
        else:
            order = in_memory_order(rs, rows[:-1], randomize)
        return order if split == "train" else None

    def positions(self, index: int) -> np.ndarray:
        """Rows of the split (in file order) that this rank's slice of batch `index` holds."""
        start, stop = local_bounds(self.batch_size(index), self.rank, self.world_size)
        pos = np.arange(start, stop, dtype=np.int64) + index * self.mini_batch_size
        if self.order is not None:
            return self.order[pos]
        if self.randomize == "total-bijection":
            return self._perm_total(pos)
        if self.randomize == "day-bijection":
            seg = np.searchsorted(self.starts, pos, side="right") - 1
            out = np.empty_like(pos)
            for s in np.unique(seg):
                m = seg == s
                out[m] = self.starts[s] + self._perm_day[s](pos[m] - self.starts[s])
            return out
        return pos

    def raw(self, index: int) -> RawBatch:
        """This rank's slice of global batch `index` (see the class docstring)."""
        rows = self.positions(index)
        n = rows.size
        dense = np.empty((n, NUM_DENSE), dtype=np.float32)
        sparse = np.empty((n, NUM_SPARSE), dtype=np.int32)
        labels = np.empty((n, 1), dtype=np.int32)
        seg = np.searchsorted(self.starts, rows, side="right") - 1
        contiguous = self.randomize == "none"
        for s in np.unique(seg):
            day_lo = self.segments[s][1] - self.starts[s]  # split row -> row in the day
            m = seg == s
            if contiguous:  # one slice of the memory map per day
                lo, hi = int(rows[m][0] + day_lo), int(rows[m][-1] + day_lo + 1)
                pick: slice | np.ndarray = slice(lo, hi)
            else:
                pick = rows[m] + day_lo
            for out, src in zip((dense, sparse, labels), self._maps[s]):
                out[m] = src[pick]
        if self.multi_hot is not None:
            lengths, values = self.multi_hot.expand(sparse)
        else:
            lengths = np.ones((NUM_SPARSE, n), dtype=np.int64)
            values = sparse.T.astype(np.int64).reshape(-1)
        return RawBatch(
            dense=dense, lengths=lengths, values=values, targets=labels.astype(np.float32)
        )
