"""The reference's shuffles of the Criteo training rows (`--data-randomize total | day`),
drawn from its seeded numpy stream: the same permutations, at the same point, so that the
batches and the initial weights drawn after them are the reference's.

The training rows are numbered in file order, day by day (day d's rows start at the sum of
the earlier days' rows); an order is the int64 array (n_train,) of those numbers in the order
the batches take them. Each function advances `rs` (the reference's `np.random`, seeded with
--numpy-rand-seed) exactly as the reference does.

- `in_memory_order` (the reference's default, without --memory-map): what
  `dlrm_data_pytorch.CriteoDataset` does when it is built: `day` permutes each training day,
  `np.random.permutation` per day in day order; `total` permutes all training rows at once.
  The reference builds the dataset twice, train split then test split, and each build draws
  the permutations (the test split's are not used): the caller builds ours the same way.
- `reordered_order` (`--memory-map`): what `data_utils.concatCriteoAdData` does when it writes
  its reordered days (once, when it preprocesses; its later runs reuse them and draw nothing).
  Pass 1, `total` only: every day (the last too) draws `randint(0, days - 1)` per row, the
  training day's bucket; a row whose bucket is full draws again, one scalar at a time, until
  it finds room (buckets have the training days' sizes); the last day stays in its own
  bucket, in order. Pass 2 (`total` and `day`): each training bucket is permuted,
  `np.random.permutation` of its size, in day order. Training reads bucket 0, 1, ... in
  turn; the test day is never reordered.

Both hold the order in memory: 8 bytes per training row on every rank (Kaggle: 0.3 GB;
Terabyte: 33 GB, 5 GB with --data-sub-sample-rate=0.875), plus the draw (numpy's shuffle:
about 0.1 s per million rows, twice without --memory-map). Beyond that, `total-bijection` /
`day-bijection` are ours (`hashing.Bijection`): no memory, no draws, other orders.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 1 << 20  # rows per step of the bucket assignment
_TRIM = 1 << 22  # redraws consumed before the buffer is cut back


def in_memory_order(rs: np.random.RandomState, train_rows: list[int], how: str) -> np.ndarray:
    """The training order `CriteoDataset(..., memory_map=False)` draws; train_rows: rows
    per training day (all days but the last). how: total | day."""
    if how == "total":
        return rs.permutation(sum(train_rows))
    starts = np.concatenate(([0], np.cumsum(train_rows, dtype=np.int64)))
    return np.concatenate(
        [start + rs.permutation(n) for start, n in zip(starts, train_rows)] or [np.empty(0)]
    ).astype(np.int64)


def reordered_order(rs: np.random.RandomState, day_rows: list[int], how: str) -> np.ndarray:
    """The training order of the reference's reordered days (`--memory-map`); day_rows:
    rows of every day, the last (test) day too. how: total | day."""
    caps = np.asarray(day_rows[:-1], dtype=np.int64)  # the training buckets
    buckets = caps.size
    starts = np.concatenate(([0], np.cumsum(caps)))
    if how == "total":
        bucket_of = np.empty(int(starts[-1]), dtype=np.int8)
        filled = np.zeros(buckets, dtype=np.int64)
        for day, n in enumerate(day_rows):
            choice = rs.randint(low=0, high=buckets, size=n)
            if day < buckets:
                bucket_of[starts[day] : starts[day + 1]] = _assign(rs, choice, filled, caps)
    order = np.empty(int(starts[-1]), dtype=np.int64)
    for j in range(buckets):
        rows = (
            np.flatnonzero(bucket_of == j)
            if how == "total"
            else np.arange(starts[j], starts[j + 1])
        )
        order[starts[j] : starts[j + 1]] = rows[rs.permutation(int(caps[j]))]
    return order


def _assign(
    rs: np.random.RandomState, choice: np.ndarray, filled: np.ndarray, caps: np.ndarray
) -> np.ndarray:
    """Buckets of one day's rows: each row's drawn choice, or, while that bucket is full
    (filled >= caps), the next scalar `randint(0, buckets)` draws until one has room, row
    by row. Vectorized: within a step the set of full buckets is fixed, so the rows that
    must draw again take the next accepted redraws in turn; a step ends at the row that
    fills a bucket. filled (buckets,) is updated. Returns (n,) int8."""
    out = np.empty(choice.size, dtype=np.int8)
    redraws = _Redraws(rs, caps.size)
    k = 0
    while k < choice.size:
        full = filled >= caps
        pick = choice[k : k + _CHUNK].copy()
        again = np.flatnonzero(full[pick])
        if again.size:
            pick[again] = redraws.peek(again.size, full)
        room = caps - filled
        counts = np.bincount(pick, minlength=caps.size)
        stop = pick.size
        for b in np.flatnonzero((counts >= room) & ~full):  # b fills inside this step
            stop = min(stop, int(np.flatnonzero(pick == b)[room[b] - 1]) + 1)
        redraws.consume(int(np.searchsorted(again, stop)))
        out[k : k + stop] = pick[:stop]
        filled += np.bincount(pick[:stop], minlength=caps.size)
        k += stop
    redraws.close()
    return out


class _Redraws:
    """The reference's scalar redraws `rs.randint(0, high)`, read ahead in blocks (a block
    of k draws is k scalar draws: numpy's legacy bounded integers draw one value at a time
    either way; tested) and handed back at `close`: rs ends right after the draws used."""

    def __init__(self, rs: np.random.RandomState, high: int) -> None:
        self.rs, self.high = rs, high
        self.start = rs.get_state()  # rs's state before buf[0]
        self.buf = np.empty(0, dtype=np.int64)
        self.used = 0  # buf[:used] are consumed
        self.accepted = np.empty(0, dtype=np.int64)  # of the last peek

    def peek(self, m: int, full: np.ndarray) -> np.ndarray:
        """The next m redraws that land in a bucket with room (not consumed yet)."""
        free = max(int((~full).sum()), 1)
        while True:
            accepted = np.flatnonzero(~full[self.buf[self.used :]])
            if accepted.size >= m:
                break
            more = int((m - accepted.size) * self.high / free * 1.25) + 1024
            self.buf = np.concatenate([self.buf, self.rs.randint(0, self.high, size=more)])
        self.accepted = accepted[:m]
        return self.buf[self.used + self.accepted]

    def consume(self, j: int) -> None:
        """The first j rows of the last peek took their redraws (and the rejected ones
        before them)."""
        if j:
            self.used += int(self.accepted[j - 1]) + 1
        if self.used > _TRIM:  # cut the buffer back: re-sync the saved state to `used`
            self._rewind()
            self.start = self.rs.get_state()
            rest = self.buf[self.used :]
            self.rs.randint(0, self.high, size=rest.size)  # back to the end of the buffer
            self.buf, self.used = rest, 0

    def _rewind(self) -> None:
        self.rs.set_state(self.start)
        self.rs.randint(0, self.high, size=self.used)

    def close(self) -> None:
        self._rewind()
