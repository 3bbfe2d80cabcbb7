"""Criteo preprocessing: raw TSV -> the processed, memory-mappable format training reads.

    python -m dlrm_dist.data.criteo preprocess --data-set kaggle \\
        --raw-data-file input/train.txt --processed-data-file input/kaggle_processed

The processed directory holds, per day d (Kaggle: the 7 contiguous "days" the reference cuts
train.txt into, by line count; Terabyte: day_0 ... day_23):

    day_{d}_dense.npy   (n, 13) float32  log(max(x, 0) + 1) of I1..I13, missing = 0
    day_{d}_sparse.npy  (n, 26) int32    row ids of C1..C26
    day_{d}_labels.npy  (n, 1)  int32    0 / 1
    day_{d}.json                         that day's summary (rows, bad lines, sub-sampled)
    vocab.npz                            (vocab) f0..f25: each feature's values, uint32, in
                                         row order (row r of table f is the value f{f}[r])
    meta.json                            settings, days, rows per table ("counts"), the id
                                         order ("id_order"): written last; its presence
                                         means the data is complete

These are the file names, shapes and dtypes of torchrec's binary Criteo format, so
`torchrec.datasets.criteo.InMemoryBinaryCriteoIterDataPipe` reads them too (tested).

Categorical ids, as the reference's `data_utils.getCriteoAdData`: the hex value, `% M` when
--max-ind-range M > 0, then (`--data-cat-encoding vocab`, the default) the row of that value in
its feature's vocabulary, numbered in order of first appearance: day by day, line by line (the
reference fills a dict per feature in that order and numbers its keys; with several processes
it merges the days' dicts in day order, which is the same order). Lines dropped by
sub-sampling do not count. counts[f] = the vocabulary's size. `hash` skips the vocabulary (one
pass, no vocabulary in memory): the row is the value % M and every table has M rows.
meta.json says which (`id_order`: first-appearance | hash). Data written before format 2 has
its vocabulary ids in sorted order: it is rebuilt when the raw files are there (a log line
says so) and refused with one line otherwise, never mixed with the reference's ids.
`--data-sub-sample-rate r` drops each negative line with probability r (every day, as the
reference), from a generator seeded with (--numpy-rand-seed, day).

Memory is bounded by the block size plus, with `vocab`, the vocabulary (never by the file
size): lines are parsed in blocks and appended to the output files. Resumable: each output is
written under a temporary name and renamed when complete; a day whose `day_{d}.json` exists
is skipped on a rerun (its raw file is not read), so an interrupted Terabyte run continues.
`vocab` makes two passes: raw values per day (`day_{d}_raw.npy`, uint32, and its distinct
values with the row of each one's first appearance, `day_{d}_uniques.npz`), then the
vocabulary (`vocab.npz`, merged day by day in day order), then the ids per day.

--preprocess-workers N runs the per-day work in N processes: Terabyte's days are parsed in
parallel (each is its own file; its sub-sampling generator is seeded by its day), the
vocabulary is merged feature by feature in parallel, and every day's ids are mapped in
parallel. Every output depends only on its day (or feature), so the files are those of one
process, byte for byte (tested), and a rerun resumes the same way. Kaggle's days are cut from
one file by line count, so its parsing stays in one process (its mapping is parallel). Each
worker holds a parse block, and, when mapping, the whole vocabulary (8 bytes a row: the values
sorted, and their rows).

Not from torchrec.datasets.criteo: its `tsv_to_npys` holds a whole file in Python lists
(memory grows with the file), reports no line numbers, and its dense transform is
log(x - min + 2), not the reference's; its `sparse_to_contiguous` loads every day and maps
with a Python dict per value, and its frequency threshold gives other ids than the reference.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from dlrm_dist.config import DataConfig, TrainConfig, choices
from dlrm_dist.data import criteo_tsv as tsv
from dlrm_dist.data.criteo_files import (
    DAYS,
    FORMAT,
    ID_ORDER,
    META,
    SETTINGS,
    Settings,
    check_settings,
    load_meta,
    processed_dir,
    raw_files,
    refuse_stale,
    settings_of,
    stale_ids,
)
from dlrm_dist.data.criteo_tsv import NUM_DENSE, NUM_SPARSE
from dlrm_dist.errors import ConfigError, DlrmDistError

log = logging.getLogger(__name__)

_HEADER_BYTES = 128  # .npy header of our (n, k) arrays: fixed, so it is rewritten in place
_MAP_ROWS = 1 << 18  # rows per block when mapping raw values to vocabulary rows
_NO_VALUES = np.empty(0, dtype=np.uint32)


# --- writing ------------------------------------------------------------------------------


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


class _NpyWriter:
    """Rows appended to a 2-D .npy under a temporary name; the header (written first for 0
    rows, always 128 bytes for our shapes) is rewritten with the row count at close, then the
    file is renamed into place. Nothing but the current block is held in memory."""

    def __init__(self, path: Path, dtype: Any, width: int) -> None:
        self.path, self.dtype, self.width, self.rows = path, np.dtype(dtype), width, 0
        self.tmp = path.with_name(path.name + ".tmp")
        self.fh = open(self.tmp, "wb")  # noqa: SIM115 (closed in close/abort)
        self._header()

    def _header(self) -> None:
        self.fh.seek(0)
        np.lib.format.write_array_header_1_0(
            self.fh,
            {
                "descr": np.lib.format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": (self.rows, self.width),
            },
        )
        assert self.fh.tell() == _HEADER_BYTES

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1, self.width)
        self.fh.write(rows.data)
        self.rows += rows.shape[0]

    def close(self) -> None:
        self._header()
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


_ROW_BITS = 32  # a day's row in the low bits of a first-seen key, its value in the high ones
_ROW_MASK = np.uint64((1 << _ROW_BITS) - 1)


def _first_of_each(keys: np.ndarray) -> np.ndarray:
    """Sorted uint64 keys `value << 32 | row`, one per distinct value: its smallest row."""
    keys = np.sort(keys)
    values = keys >> np.uint64(_ROW_BITS)
    keep = np.ones(keys.size, dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return keys[keep]


class _FirstSeen:
    """Per feature, a day's distinct values and the row (in the day) of each one's first
    appearance, as sorted keys `value << 32 | row` (one sort, no argsort: the smallest key
    of a value is its first row). Blocks' keys wait in a list until they outweigh what is
    merged, so merging costs O(total log total) overall."""

    def __init__(self) -> None:
        self.merged = [np.empty(0, dtype=np.uint64) for _ in range(NUM_SPARSE)]
        self.pending: list[list[np.ndarray]] = [[] for _ in range(NUM_SPARSE)]
        self.size = [0] * NUM_SPARSE

    def add(self, values: np.ndarray, first_row: int) -> None:
        """values (n, 26) uint32: the day's rows first_row .. first_row + n - 1."""
        if first_row + values.shape[0] > 1 << _ROW_BITS:
            raise ConfigError(f"a day holds more than 2^{_ROW_BITS} rows: split the raw file")
        rows = np.arange(first_row, first_row + values.shape[0], dtype=np.uint64)
        for f in range(NUM_SPARSE):
            keys = _first_of_each((values[:, f].astype(np.uint64) << np.uint64(_ROW_BITS)) | rows)
            self.pending[f].append(keys)
            self.size[f] += keys.size
            if self.size[f] > max(self.merged[f].size, 1 << 16):
                self._merge(f)

    def _merge(self, f: int) -> None:
        self.merged[f] = _first_of_each(np.concatenate([self.merged[f], *self.pending[f]]))
        self.pending[f], self.size[f] = [], 0

    def result(self) -> list[np.ndarray]:
        for f in range(NUM_SPARSE):
            self._merge(f)
        return self.merged


class _SortedUniques(_FirstSeen):
    """The sorted order written before format 2 (`id_order="sorted"`): distinct values
    only. Kept to measure preprocessing before and after (benchmarks/criteo_loader.py)."""

    def add(self, values: np.ndarray, first_row: int) -> None:
        for f in range(NUM_SPARSE):
            u = np.unique(values[:, f])
            self.pending[f].append(u)
            self.size[f] += u.size
            if self.size[f] > max(self.merged[f].size, 1 << 16):
                self._merge(f)

    def _merge(self, f: int) -> None:
        self.merged[f] = np.unique(np.concatenate([self.merged[f], *self.pending[f]]))
        self.pending[f], self.size[f] = [], 0


def first_appearance(days: Iterable[np.ndarray]) -> np.ndarray:
    """One feature's vocabulary in id order: its distinct values ordered by first
    appearance, from each day's first-seen keys (`_FirstSeen`) in day order.

    A value's place is (the first day it is in, its first row there): the values are kept
    sorted, with that place as an int64 key (day << 32 | row); each day adds the values
    not seen yet (inserted in place: O(vocabulary) per day, no re-sort); the ids are then
    the keys' ranks. uint32 (n,)."""
    values = np.empty(0, dtype=np.uint32)
    places = np.empty(0, dtype=np.int64)
    for day, keys in enumerate(days):
        day_values = (keys >> np.uint64(_ROW_BITS)).astype(np.uint32)
        at = np.searchsorted(values, day_values)
        seen = at < values.size
        seen[seen] = values[at[seen]] == day_values[seen]
        new = ~seen
        place = (keys[new] & _ROW_MASK).astype(np.int64) | (day << _ROW_BITS)
        values = np.insert(values, at[new], day_values[new])
        places = np.insert(places, at[new], place)
    return values[np.argsort(places)]


def dense_transform(x: np.ndarray) -> np.ndarray:
    """The reference's: negatives to 0, then log(x + 1) in float32."""
    return np.log(np.maximum(x, 0).astype(np.float32) + np.float32(1))


def _pieces_by_day(
    stream: Iterable[tuple[int, int, bytes]], days: int
) -> Iterator[tuple[int, Iterator[tuple[int, bytes]]]]:
    """(day, its (first line, block) pieces) for every day in order, days without lines too.
    `stream` yields (day, first line, block) with non-decreasing days."""
    groups = itertools.groupby(stream, key=lambda piece: piece[0])
    current = next(groups, None)
    for day in range(days):
        if current is not None and current[0] == day:
            yield day, ((first, block) for _, first, block in current[1])
            current = next(groups, None)
        else:
            yield day, iter(())


def _kaggle_stream(path: Path, ends: np.ndarray, bar: Any) -> Iterator[tuple[int, int, bytes]]:
    """(day, first line, block) of train.txt, blocks cut where a day ends: day d holds lines
    [ends[d - 1], ends[d]) (0-based)."""
    for first, block in tsv.read_blocks(path, on_progress=bar.to):
        nls = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
        lo = 0
        while lo < nls.size:
            day = int(np.searchsorted(ends, first - 1 + lo, side="right"))
            hi = min(nls.size, int(ends[day]) - (first - 1))
            start = 0 if lo == 0 else int(nls[lo - 1]) + 1
            yield day, first + lo, block[start : int(nls[hi - 1]) + 1]
            lo = hi


class _Bar:
    """tqdm over bytes when stderr is a terminal (and show), else nothing."""

    def __init__(self, total: int, desc: str, show: bool = True) -> None:
        self.bar = None
        if show and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False)

    def to(self, position: int) -> None:
        if self.bar is not None:
            self.bar.update(position - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Workers:
    """Jobs run in this process, in order (n = 1), or in n worker processes, in any order.
    The processes start at the first parallel map; spawned, not forked: the trainer that
    preprocesses first has threads (torch, the process group) that a fork would not copy.
    concurrent.futures rather than multiprocessing.Pool: a worker killed (out of memory)
    is an error there, not a hang."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pool: ProcessPoolExecutor | None = None

    def parallel(self, jobs: int) -> bool:
        return self.n > 1 and jobs > 1

    def map(self, fn: Callable[[Any], Any], jobs: list[Any]) -> Iterator[Any]:
        """fn(job) for every job (fn and the jobs picklable), as they finish."""
        if not self.parallel(len(jobs)):
            yield from map(fn, jobs)
            return
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.n, mp_context=multiprocessing.get_context("spawn"))
        futures = [self.pool.submit(fn, job) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BrokenProcessPool:
            raise ConfigError(
                "a preprocessing worker process died (out of memory?): rerun to resume, "
                "with fewer --preprocess-workers"
            ) from None

    def close(self, failed: bool) -> None:
        """Wait for the workers; after a failure, stop them first (a day may take hours)."""
        if self.pool is None:
            return
        if failed:  # no public way to stop running jobs before Python 3.14
            for process in list(getattr(self.pool, "_processes", {}).values()):
                process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = None


def _parse_job(job: tuple[Preprocessor, int, bool]) -> tuple[int, dict[str, Any]]:
    pre, day, bar = job
    return day, pre._parse_file_day(day, bar)


def _merge_job(job: tuple[Preprocessor, int]) -> tuple[int, np.ndarray]:
    pre, feature = job
    return feature, pre._vocabulary(feature)


_worker_vocab: dict[Path, list[tuple[np.ndarray, np.ndarray]]] = {}  # loaded once a worker


def _map_job(job: tuple[Preprocessor, int]) -> int:
    pre, day = job
    path = pre.dir / "vocab.npz"
    if path not in _worker_vocab:
        _worker_vocab.clear()
        _worker_vocab[path] = _load_vocab(path)
    pre._map_day(day, _worker_vocab[path])
    return day


def _load_vocab(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per feature, to map values to rows: (its values sorted, uint32; their rows, int32)."""
    out = []
    with np.load(path) as z:
        for f in range(NUM_SPARSE):
            by_row = z[f"f{f}"]
            rows = np.argsort(by_row, kind="stable").astype(np.int32)
            out.append((by_row[rows], rows))
    return out


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Preprocessor:
    """One preprocessing job: raw files -> `directory` (see the module docstring).
    workers: processes for the per-day work, 0 = one per CPU (at most one per day)."""

    def __init__(
        self,
        settings: Settings,
        raw_data_file: str,
        directory: str | Path,
        skip_bad_lines: bool = False,
        seed: int = 123,
        workers: int = 1,
        id_order: str = ID_ORDER,
    ) -> None:
        """id_order: `first-appearance` (the reference's); `sorted`, the order before format
        2, only to time both (benchmarks/criteo_loader.py): training refuses its output."""
        self.settings, self.skip_bad_lines = settings, skip_bad_lines
        self.id_order = id_order if settings.cat_encoding == "vocab" else "hash"
        self.dir = Path(directory)
        self.days = DAYS[settings.data_set]
        self.raw = raw_files(settings.data_set, raw_data_file) if raw_data_file else []
        self.seed = seed
        self.workers = min(workers or available_cpus(), self.days)

    def _path(self, day: int, what: str) -> Path:
        return self.dir / f"day_{day}_{what}"

    def run(self) -> dict[str, Any]:
        meta = load_meta(self.dir)
        if meta is not None:
            check_settings(meta, self.settings, self.dir)
            if not stale_ids(meta) or self.id_order == "sorted":
                log.info("%s: already preprocessed", self.dir)
                return meta
            self._rebuild_stale()
        if not self.raw:
            raise ConfigError(
                f"{self.dir} holds no preprocessed data ({META} is missing): "
                "pass --raw-data-file to preprocess"
            )
        missing = [str(p) for p in self.raw if not p.is_file()]
        if missing:
            raise ConfigError(f"raw data file {missing[0]} does not exist: check --raw-data-file")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._settings_file()
        start = time.perf_counter()
        workers = _Workers(self.workers)
        try:
            records = self._parse_days(workers)
            counts = self._sparse_ids(workers)
        except BaseException:
            if workers.pool is not None:  # stopped workers leave their temporary files
                workers.close(failed=True)
                for tmp in self.dir.glob("*.tmp"):
                    tmp.unlink(missing_ok=True)
            raise
        workers.close(failed=False)
        meta = {
            "format": FORMAT,
            **asdict(self.settings),
            "seed": self.seed,
            "dense_features": NUM_DENSE,
            "id_order": self.id_order,
            "counts": counts,
            "days": records,
        }
        _write_json(self.dir / META, meta)
        for day in range(self.days):
            self._path(day, "uniques.npz").unlink(missing_ok=True)
        self._summary(records, time.perf_counter() - start)
        return meta

    def _rebuild_stale(self) -> None:
        """A complete directory of the old sorted ids: preprocess again from the raw files
        (its outputs removed, meta.json first, so no rank reads it meanwhile), or refuse."""
        missing = not self.raw or any(not p.is_file() for p in self.raw)
        if missing:
            raise refuse_stale(
                self.dir,
                "pass --raw-data-file to rebuild it with the reference's ids, or delete it",
            )
        log.warning(
            "%s holds ids in sorted order (an older dlrm_dist; the reference numbers them by "
            "first appearance): rebuilding it from %s",
            self.dir,
            self.raw[0] if len(self.raw) == 1 else f"{self.raw[0]} ...",
        )
        self._clear()

    def _clear(self) -> None:
        """Remove every file preprocessing writes (nothing else in the directory)."""
        (self.dir / META).unlink(missing_ok=True)
        names = ["vocab.npz", "vocab.npz.tmp", SETTINGS]
        for day in range(self.days):
            names += [f"day_{day}.json"] + [
                f"day_{day}_{what}{tmp}"
                for what in ("dense.npy", "labels.npy", "sparse.npy", "raw.npy", "uniques.npz")
                for tmp in ("", ".tmp")
            ]
        for name in names:
            (self.dir / name).unlink(missing_ok=True)

    def _settings_file(self) -> None:
        path = self.dir / SETTINGS
        if path.exists():  # a resumed run: same settings, and the first run's seed
            found = json.loads(path.read_text())
            check_settings(found, self.settings, self.dir)
            if found.get("id_order", "sorted") != self.id_order:  # an older run's days
                log.warning(
                    "%s: the interrupted run before this one numbered ids in %s order: "
                    "starting over",
                    self.dir,
                    found.get("id_order", "sorted"),
                )
                self._clear()
            else:
                self.seed = int(found["seed"])
        if not path.exists():
            settings = {"format": FORMAT, **asdict(self.settings), "seed": self.seed}
            _write_json(path, {**settings, "id_order": self.id_order})

    def _done(self, day: int) -> dict[str, Any] | None:
        path = self.dir / f"day_{day}.json"
        return json.loads(path.read_text()) if path.exists() else None

    # pass 1: parse every day not done yet
    def _parse_days(self, workers: _Workers) -> list[dict[str, Any]]:
        records: list[dict[str, Any] | None] = [self._done(d) for d in range(self.days)]
        todo = [d for d in range(self.days) if records[d] is None]
        if todo and len(todo) < self.days:
            log.info("resuming: days %s already done", [d for d in range(self.days) if records[d]])
        if not todo:
            return records  # type: ignore[return-value]
        if self.settings.data_set == "kaggle":
            path = self.raw[0]
            bar = _Bar(path.stat().st_size, f"counting lines of {path.name}")
            total = tsv.count_lines(path, on_progress=bar.to)
            bar.close()
            per, extra = divmod(total, self.days)
            ends = np.cumsum([per + 1] * extra + [per] * (self.days - extra))
            bar = _Bar(path.stat().st_size, f"parsing {path.name}")
            for day, pieces in _pieces_by_day(_kaggle_stream(path, ends, bar), self.days):
                if records[day] is None:
                    records[day] = self._parse_day(day, pieces, path)
                    self._log_day(day, records[day])
            bar.close()
        else:
            sizes = {day: self.raw[day].stat().st_size for day in todo}
            parallel = workers.parallel(len(todo))
            desc = f"parsing {len(todo)} days in {workers.n} processes"
            bar = _Bar(sum(sizes.values()), desc, show=parallel)
            done = 0
            jobs = [(self, day, not parallel) for day in todo]  # one bar per day, or this
            for day, record in workers.map(_parse_job, jobs):
                records[day] = record
                self._log_day(day, record)
                done += sizes[day]
                bar.to(done)
            bar.close()
        return records  # type: ignore[return-value]

    def _parse_file_day(self, day: int, bar: bool) -> dict[str, Any]:
        """Parse Terabyte's day `day` (its own file), with its own progress bar when bar."""
        path = self.raw[day]
        progress = _Bar(path.stat().st_size, f"parsing {path.name}", show=bar)
        try:
            return self._parse_day(day, tsv.read_blocks(path, on_progress=progress.to), path)
        finally:
            progress.close()

    def _parse_day(
        self, day: int, pieces: Iterable[tuple[int, bytes]], path: Path
    ) -> dict[str, Any]:
        s = self.settings
        vocab = s.cat_encoding == "vocab"
        writers = [
            _NpyWriter(self._path(day, "dense.npy"), np.float32, NUM_DENSE),
            _NpyWriter(self._path(day, "labels.npy"), np.int32, 1),
            _NpyWriter(self._path(day, "raw.npy" if vocab else "sparse.npy"), _id_dtype(s), 26),
        ]
        uniques = self._first_seen() if vocab else None
        rng = np.random.default_rng([self.seed, day]) if s.sub_sample_rate > 0 else None
        lines = bad = dropped = positives = 0
        first_bad = ""
        try:
            for first, block in pieces:
                parsed = tsv.parse_block(block)
                n_lines = parsed.labels.size + parsed.bad.size
                lines += n_lines
                if parsed.bad.size:
                    where = f"{path}:{first + int(parsed.bad[0])}"
                    lo, hi = parsed.bad_spans[0]
                    reason = f"{where}: {tsv.describe(block[lo:hi])}"
                    if not self.skip_bad_lines:
                        raise ConfigError(f"{reason} (or pass --skip-bad-lines)")
                    bad += parsed.bad.size
                    first_bad = first_bad or reason
                labels, dense, sparse = parsed.labels, parsed.dense, parsed.sparse
                if rng is not None:
                    drop = (labels == 0) & (rng.random(labels.size) < s.sub_sample_rate)
                    dropped += int(drop.sum())
                    keep = ~drop
                    labels, dense, sparse = labels[keep], dense[keep], sparse[keep]
                if s.max_ind_range > 0:
                    sparse = sparse % np.uint32(s.max_ind_range)
                positives += int(labels.sum())
                if uniques is not None:
                    uniques.add(sparse, writers[0].rows)
                writers[0].append(dense_transform(dense))
                writers[1].append(labels)
                writers[2].append(sparse)
        except BaseException:
            for w in writers:
                w.abort()
            raise
        for w in writers:
            w.close()
        if uniques is not None:
            _save_npz(self._path(day, "uniques.npz"), uniques.result())
        record = {
            "source": str(path),
            "lines": lines,
            "rows": writers[0].rows,
            "positives": positives,
            "bad_lines": bad,
            "first_bad_line": first_bad,
            "dropped_negatives": dropped,
        }
        _write_json(self.dir / f"day_{day}.json", record)
        return record

    def _first_seen(self) -> _FirstSeen:
        return _SortedUniques() if self.id_order == "sorted" else _FirstSeen()

    @staticmethod
    def _log_day(day: int, record: dict[str, Any]) -> None:
        log.info(
            "day %d: %d rows from %d lines (%d bad lines skipped, %d negatives sub-sampled away)",
            day,
            record["rows"],
            record["lines"],
            record["bad_lines"],
            record["dropped_negatives"],
        )

    # pass 2 (vocab): the vocabulary, then every day's ids
    def _sparse_ids(self, workers: _Workers) -> list[int]:
        s = self.settings
        if s.cat_encoding == "hash":
            return [s.max_ind_range] * NUM_SPARSE
        vocab_path = self.dir / "vocab.npz"
        if not vocab_path.exists():
            merged: list[np.ndarray] = [np.empty(0, dtype=np.uint32)] * NUM_SPARSE
            jobs = [(self, f) for f in range(NUM_SPARSE)]
            for f, values in workers.map(_merge_job, jobs):
                merged[f] = values
            if max(v.size for v in merged) >= 1 << 31:
                raise ConfigError("a vocabulary has 2^31 values or more: set --max-ind-range")
            _save_npz(vocab_path, merged)
        todo = []
        for day in range(self.days):
            if self._path(day, "sparse.npy").exists():
                self._path(day, "raw.npy").unlink(missing_ok=True)
            else:
                todo.append(day)
        if workers.parallel(len(todo)):
            for _ in workers.map(_map_job, [(self, day) for day in todo]):
                pass
            with np.load(vocab_path) as z:
                return [int(z[f"f{f}"].size) for f in range(NUM_SPARSE)]
        vocab = _load_vocab(vocab_path)
        for day in todo:
            self._map_day(day, vocab)
        return [int(v.size) for v, _ in vocab]

    def _day_uniques(self, feature: int) -> Iterator[np.ndarray]:
        for day in range(self.days):
            with np.load(self._path(day, "uniques.npz")) as z:
                yield z[f"f{feature}"]

    def _vocabulary(self, feature: int) -> np.ndarray:
        """`feature`'s distinct values over all days in id order (uint32): by first
        appearance (day by day, line by line), or sorted (id_order="sorted")."""
        if self.id_order == "sorted":
            return functools.reduce(np.union1d, self._day_uniques(feature), _NO_VALUES)
        return first_appearance(self._day_uniques(feature))

    def _map_day(self, day: int, vocab: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Day `day`'s raw values -> their rows in the vocabulary (day_{day}_sparse.npy)."""
        raw_path = self._path(day, "raw.npy")
        empty = raw_path.stat().st_size == _HEADER_BYTES  # numpy cannot map 0 bytes
        raw = None if empty else np.load(raw_path, mmap_mode="r")
        rows = 0 if raw is None else raw.shape[0]
        out = _NpyWriter(self._path(day, "sparse.npy"), np.int32, NUM_SPARSE)
        try:
            for lo in range(0, rows, _MAP_ROWS):
                block = np.asarray(raw[lo : lo + _MAP_ROWS])  # type: ignore[index]
                ids = np.empty(block.shape, dtype=np.int32)
                for f, (values, rows) in enumerate(vocab):
                    ids[:, f] = rows[np.searchsorted(values, block[:, f])]
                out.append(ids)
        except BaseException:
            out.abort()
            raise
        out.close()
        del raw
        raw_path.unlink()

    def _summary(self, records: list[dict[str, Any]], seconds: float) -> None:
        total = {k: sum(r[k] for r in records) for k in ("lines", "rows", "bad_lines")}
        dropped = sum(r["dropped_negatives"] for r in records)
        log.info(
            "preprocessed %s: %d rows in %d days from %d lines (%d bad lines skipped, "
            "%d negatives sub-sampled away) in %.1f s",
            self.dir,
            total["rows"],
            self.days,
            total["lines"],
            total["bad_lines"],
            dropped,
            seconds,
        )
        for r in records:
            if r["first_bad_line"]:
                log.info("first bad line: %s", r["first_bad_line"])
                break


def _id_dtype(s: Settings) -> Any:
    return np.uint32 if s.cat_encoding == "vocab" else np.int32


def _save_npz(path: Path, arrays: list[np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **{f"f{f}": a for f, a in enumerate(arrays)})
    os.replace(tmp, path)


def ensure_processed(cfg: DataConfig, seed: int, rank: int = 0, poll_s: float = 1.0):
    """The processed data's meta, preprocessing first when it is not complete (as the
    reference does). Rank 0 preprocesses; the others wait for its meta.json (polling the
    file, not a collective: preprocessing can outlast a process-group timeout; if rank 0
    fails, the launcher stops them)."""
    directory = processed_dir(cfg)
    settings = settings_of(cfg)
    if rank == 0:
        return Preprocessor(
            settings,
            cfg.raw_data_file,
            directory,
            cfg.skip_bad_lines,
            seed,
            cfg.preprocess_workers,
        ).run()
    while (meta := load_meta(directory)) is None or stale_ids(meta):  # rank 0 rebuilds it
        time.sleep(poll_s)
    check_settings(meta, settings, directory)
    return meta


# --- python -m dlrm_dist.data.criteo ------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dlrm_dist.data.criteo",
        description="Criteo raw TSV -> the processed format dlrm_dist trains on.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("preprocess", help="convert the raw files (resumable)")
    d = DataConfig()  # the trainer's defaults and choices; main checks the values as it does
    p.add_argument("--data-set", default=d.data_set, choices=choices("data", "data_set"))
    p.add_argument(
        "--raw-data-file",
        required=True,
        help="Kaggle: train.txt; Terabyte: the prefix of day_0 ... day_23 (e.g. input/day)",
    )
    p.add_argument(
        "--processed-data-file", default="", help="output directory [<raw-data-file>_processed]"
    )
    p.add_argument(
        "--max-ind-range",
        type=int,
        default=d.max_ind_range,
        help="categorical values modulo this, when > 0",
    )
    p.add_argument(
        "--data-cat-encoding",
        default=d.cat_encoding,
        choices=choices("data", "cat_encoding"),
        help="vocab: rows of each feature's distinct values (the reference); hash: value mod "
        "--max-ind-range",
    )
    p.add_argument(
        "--data-sub-sample-rate",
        type=float,
        default=d.data_sub_sample_rate,
        help="drop this fraction of negatives",
    )
    p.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed lines")
    seed = TrainConfig().numpy_rand_seed
    p.add_argument("--numpy-rand-seed", type=int, default=seed, help="seed of the sub-sampling")
    p.add_argument(
        "--preprocess-workers",
        type=int,
        default=d.preprocess_workers,
        help="processes for the per-day work (Terabyte's parsing, every day's id mapping); "
        "0 = one per CPU, at most one per day; the output is the same",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = DataConfig(
        generation="dataset",
        data_set=args.data_set,
        raw_data_file=args.raw_data_file,
        processed_data_file=args.processed_data_file,
        max_ind_range=args.max_ind_range,
        cat_encoding=args.data_cat_encoding,
        data_sub_sample_rate=args.data_sub_sample_rate,
        skip_bad_lines=args.skip_bad_lines,
        preprocess_workers=args.preprocess_workers,
    )
    try:
        cfg.check()
        ensure_processed(cfg, args.numpy_rand_seed)
    except DlrmDistError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ERROR: interrupted (rerun to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
