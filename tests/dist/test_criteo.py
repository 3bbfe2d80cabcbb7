"""Criteo ingestion and loading on small files written here in the exact raw layout: the
reference's transforms (computed by hand), hashing and vocabularies, sub-sampling, every
malformed-input case, line ends and gzip, resuming, splits, rank slices, torchrec's reader,
the trainer end to end, and a planted signal it must learn; the reference's ids, shuffles and
losses against tests/oracle.py (its preprocessing and shuffles written from its definition)."""

from __future__ import annotations

import gzip
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlrm_dist.data import criteo_files
from dlrm_dist.data.criteo import Preprocessor
from dlrm_dist.data.criteo_data import CriteoData
from dlrm_dist.data.criteo_files import Settings
from dlrm_dist.errors import ConfigError
from dlrm_dist.train import main
from tests.common import ROOT
from tests.oracle import oracle_criteo_days, oracle_criteo_preprocess, oracle_train
from tests.unit.test_criteo import BAD, GOOD, SIZES, _line


def _random_lines(rng: np.random.Generator, n: int, first_id: int = 0) -> list[str]:
    """n lines; I1 = the line's id (first_id + i), so tests can tell rows apart."""
    lines = []
    for i in range(n):
        ints = [first_id + i] + [
            None if rng.random() < 0.2 else int(rng.integers(-3, 500)) for _ in range(12)
        ]
        cats = [None if rng.random() < 0.1 else int(rng.integers(0, 40)) * 977 for _ in range(26)]
        lines.append(_line(int(rng.random() < 0.3), ints, cats))
    return lines


def _write(path: Path, lines: list[str], end: str = "\n", final: bool = True) -> Path:
    text = end.join(lines) + (end if final and lines else "")
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_bytes(text.encode())
    return path


def _preprocess(raw: Path, out: Path, data_set: str = "kaggle", **kw) -> dict:
    skip = kw.pop("skip_bad_lines", False)
    seed = kw.pop("seed", 123)
    workers = kw.pop("workers", 1)
    return Preprocessor(Settings(data_set, **kw), str(raw), out, skip, seed, workers).run()


def _arrays(out: Path, days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dense, sparse, labels of all days, concatenated."""
    load = [
        [np.load(out / f"day_{d}_{what}.npy") for d in range(days)]
        for what in ("dense", "sparse", "labels")
    ]
    return tuple(np.concatenate(parts) for parts in load)  # type: ignore[return-value]


def _terabyte(tmp_path: Path, per_day: int = 4, gz_days=()) -> Path:
    rng = np.random.default_rng(5)
    tmp_path.mkdir(parents=True, exist_ok=True)
    for day in range(24):
        suffix = ".gz" if day in gz_days else ""
        _write(tmp_path / f"day_{day}{suffix}", _random_lines(rng, per_day, day * per_day))
    return tmp_path / "day"


HAND = [  # label, 13 ints, 26 categories: negatives, empties, long ints, short/upper hex
    _line(1, [0, -5, None, 7, 123456789012, 1, 2, 3, 4, 5, 6, 7, -1], ["a"] * 13 + [0] * 13),
    _line(None, [None] * 13, [None] * 26),
    _line(0, list(range(13)), ["FFFFFFFF", "0", "00ab", "1"] + [0x1234ABCD] * 22),
]


def _by_hand(lines: list[str], max_ind_range: int = -1):
    """The reference's transforms computed field by field in plain Python."""
    rows = [line.split("\t") for line in lines]
    labels = [int(r[0] or "0") for r in rows]
    dense = [[math.log(max(int(x or "0"), 0) + 1) for x in r[1:14]] for r in rows]
    values = [[int(x or "0", 16) for x in r[14:]] for r in rows]
    if max_ind_range > 0:
        values = [[v % max_ind_range for v in vs] for vs in values]
    return np.array(labels), np.array(dense), np.array(values, dtype=np.int64)


def _first_seen(values: list[int]) -> list[int]:
    """The distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


def _interrupt_at_day(monkeypatch, stop: int):
    """Make preprocessing stop (KeyboardInterrupt) when it reaches day `stop`; returns the
    real day parser, to put back."""
    real = Preprocessor._parse_day

    def interrupted(self, day, pieces, path):
        if day == stop:
            raise KeyboardInterrupt
        return real(self, day, pieces, path)

    monkeypatch.setattr(Preprocessor, "_parse_day", interrupted)
    return real


def test_dense_labels_and_vocabulary_by_hand(tmp_path):
    raw = _write(tmp_path / "train.txt", HAND * 3)  # 9 lines over 7 days
    meta = _preprocess(raw, tmp_path / "p")
    dense, sparse, labels = _arrays(tmp_path / "p", 7)
    want_labels, want_dense, values = _by_hand(HAND * 3)
    np.testing.assert_array_equal(labels[:, 0], want_labels)
    assert dense.dtype == np.float32 and sparse.dtype == np.int32 and labels.dtype == np.int32
    np.testing.assert_allclose(dense, want_dense, rtol=1e-6)
    vocab = [_first_seen(values[:, f].tolist()) for f in range(26)]
    want = [[vocab[f].index(v) for f, v in enumerate(row)] for row in values.tolist()]
    np.testing.assert_array_equal(sparse, want)
    assert meta["counts"] == [len(v) for v in vocab] and meta["id_order"] == "first-appearance"
    with np.load(tmp_path / "p" / "vocab.npz") as z:  # row r of table f is the value f{f}[r]
        assert [z[f"f{f}"].tolist() for f in range(26)] == vocab
    assert [d["rows"] for d in meta["days"]] == [2, 2, 1, 1, 1, 1, 1]  # divmod(9, 7)


@pytest.mark.parametrize("encoding", ["vocab", "hash"])
def test_max_ind_range(tmp_path, encoding):
    lines = _random_lines(np.random.default_rng(1), 60) + HAND
    raw = _write(tmp_path / "train.txt", lines)
    meta = _preprocess(raw, tmp_path / "p", max_ind_range=7, cat_encoding=encoding)
    _, sparse, _ = _arrays(tmp_path / "p", 7)
    values = _by_hand(lines, max_ind_range=7)[2]
    if encoding == "hash":  # value % M is the row; every table has M rows
        np.testing.assert_array_equal(sparse, values)
        assert meta["counts"] == [7] * 26
    else:  # the reference: value % M, then its row in the vocabulary of those
        vocab = [_first_seen(values[:, f].tolist()) for f in range(26)]
        for f in range(26):
            np.testing.assert_array_equal(sparse[:, f], [vocab[f].index(v) for v in values[:, f]])
        assert meta["counts"] == [len(v) for v in vocab]
        assert max(meta["counts"]) <= 7


def test_sub_sampling_drops_only_negatives_at_the_rate(tmp_path):
    rng = np.random.default_rng(2)
    lines = [_line(int(rng.random() < 0.5), [i] + [1] * 12, [1] * 26) for i in range(4000)]
    raw = _write(tmp_path / "train.txt", lines)
    meta = _preprocess(raw, tmp_path / "a", sub_sample_rate=0.75, seed=9)
    _, _, labels = _arrays(tmp_path / "a", 7)
    want = np.array([int(line[0]) for line in lines])
    assert labels.sum() == want.sum()  # every positive kept
    kept = (labels == 0).sum() / (want == 0).sum()
    assert abs(kept - 0.25) < 0.04
    assert (
        sum(d["dropped_negatives"] for d in meta["days"]) == (want == 0).sum() - (labels == 0).sum()
    )
    again = _preprocess(raw, tmp_path / "b", sub_sample_rate=0.75, seed=9)
    assert again["days"] == meta["days"]  # deterministic for a seed
    assert _preprocess(raw, tmp_path / "c")["days"][0]["dropped_negatives"] == 0


@pytest.mark.parametrize("bad,reason", BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_malformed_line_is_an_error_naming_file_and_line(tmp_path, bad, reason):
    raw = _write(tmp_path / "train.txt", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(ConfigError) as err:
        _preprocess(raw, tmp_path / "p")
    message = str(err.value)
    assert f"{raw}:3: " in message and reason in message and "--skip-bad-lines" in message
    assert "\n" not in message
    assert not list((tmp_path / "p").glob("*.tmp"))  # nothing half-written left


def test_skip_bad_lines_skips_and_counts_them(tmp_path, caplog):
    lines = [GOOD] * 10
    for i, (bad, _) in enumerate(BAD):
        lines.insert(1 + 2 * i, bad)
    raw = _write(tmp_path / "train.txt", lines)
    with caplog.at_level("INFO", logger="dlrm_dist"):
        meta = _preprocess(raw, tmp_path / "p", skip_bad_lines=True)
    assert sum(d["bad_lines"] for d in meta["days"]) == len(BAD)
    assert sum(d["rows"] for d in meta["days"]) == 10
    assert sum(d["lines"] for d in meta["days"]) == len(lines)
    assert f"{len(BAD)} bad lines skipped" in caplog.text
    assert f"first bad line: {raw}:2: " in caplog.text


def test_crlf_missing_final_newline_and_gzip_read_the_same(tmp_path):
    lines = _random_lines(np.random.default_rng(3), 50)
    variants = {
        "lf": _write(tmp_path / "lf.txt", lines),
        "crlf": _write(tmp_path / "crlf.txt", lines, end="\r\n"),
        "no_final": _write(tmp_path / "nofinal.txt", lines, final=False),
        "crlf_no_final": _write(tmp_path / "crlfnf.txt", lines, end="\r\n", final=False),
        "gz": _write(tmp_path / "train.txt.gz", lines),
    }
    want = None
    for name, raw in variants.items():
        meta = _preprocess(raw, tmp_path / f"p_{name}")
        got = _arrays(tmp_path / f"p_{name}", 7)
        assert sum(d["rows"] for d in meta["days"]) == 50, name
        if want is None:
            want = got
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_empty_files(tmp_path):
    meta = _preprocess(_write(tmp_path / "train.txt", []), tmp_path / "p")
    assert [d["rows"] for d in meta["days"]] == [0] * 7 and meta["counts"] == [0] * 26
    assert len(CriteoData(tmp_path / "p", "train", 4)) == 0
    raw = _terabyte(tmp_path, per_day=3)
    _write(tmp_path / "day_5", [])  # one empty day among others
    meta = _preprocess(raw, tmp_path / "t", "terabyte")
    assert [d["rows"] for d in meta["days"]][4:7] == [3, 0, 3]
    with pytest.raises(ConfigError, match="empty table"):
        criteo_files.table_sizes([0] * 26, [4, 3, 2])


def test_terabyte_days_plain_or_gzip(tmp_path):
    _terabyte(tmp_path / "a")
    raw = _terabyte(tmp_path / "b", gz_days=(0, 7, 23))
    assert criteo_files.raw_files("terabyte", str(raw))[7].name == "day_7.gz"
    meta_a = _preprocess(tmp_path / "a" / "day", tmp_path / "pa", "terabyte")
    meta_b = _preprocess(raw, tmp_path / "pb", "terabyte")
    assert meta_a["counts"] == meta_b["counts"]
    for a, b in zip(_arrays(tmp_path / "pa", 24), _arrays(tmp_path / "pb", 24)):
        np.testing.assert_array_equal(a, b)


def test_a_missing_terabyte_day_is_an_error(tmp_path):
    raw = _terabyte(tmp_path)
    (tmp_path / "day_9").unlink()
    with pytest.raises(ConfigError, match="day_9 does not exist"):
        _preprocess(raw, tmp_path / "p", "terabyte")


@pytest.mark.parametrize("encoding", ["vocab", "hash"])
def test_a_rerun_skips_the_days_already_done(tmp_path, monkeypatch, encoding):
    raw = _terabyte(tmp_path / "raw")
    settings = dict(cat_encoding=encoding, max_ind_range=1000 if encoding == "hash" else -1)
    clean = _preprocess(raw, tmp_path / "clean", "terabyte", **settings)

    real = _interrupt_at_day(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        _preprocess(raw, tmp_path / "p", "terabyte", **settings)
    monkeypatch.setattr(Preprocessor, "_parse_day", real)
    done = sorted(p.name for p in (tmp_path / "p").glob("day_*.json"))
    assert done == ["day_0.json", "day_1.json", "day_2.json"]
    assert not (tmp_path / "p" / "meta.json").exists()
    assert not list((tmp_path / "p").glob("*.tmp"))
    for day in range(3):  # finished days' raw files are not read again
        _write(tmp_path / "raw" / f"day_{day}", ["not a criteo line"])
    with pytest.raises(ConfigError, match="--data-sub-sample-rate=0.0 \\(not 0.5\\)"):
        _preprocess(raw, tmp_path / "p", "terabyte", sub_sample_rate=0.5, **settings)
    resumed = _preprocess(raw, tmp_path / "p", "terabyte", **settings)
    assert resumed["counts"] == clean["counts"] and resumed["days"] == clean["days"]
    for a, b in zip(_arrays(tmp_path / "p", 24), _arrays(tmp_path / "clean", 24)):
        np.testing.assert_array_equal(a, b)
    assert not list((tmp_path / "p").glob("day_*_raw.npy"))


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize(
    ("data_set", "settings"),
    [
        ("terabyte", {}),
        ("terabyte", dict(cat_encoding="hash", max_ind_range=100, sub_sample_rate=0.5)),
        ("kaggle", dict(max_ind_range=500, sub_sample_rate=0.3)),
    ],
    ids=["terabyte-vocab", "terabyte-hash", "kaggle"],
)
def test_parallel_preprocessing_writes_the_same_files(tmp_path, data_set, settings):
    if data_set == "terabyte":
        raw = _terabyte(tmp_path / "raw", per_day=6)
    else:
        raw = _write(tmp_path / "train.txt", _random_lines(np.random.default_rng(8), 100))
    serial = _preprocess(raw, tmp_path / "w1", data_set, seed=4, **settings)
    parallel = _preprocess(raw, tmp_path / "w2", data_set, seed=4, workers=2, **settings)
    assert parallel == serial
    assert _files(tmp_path / "w2") == _files(tmp_path / "w1")  # every file, byte for byte


def test_parallel_preprocessing_stops_at_a_bad_line_and_resumes(tmp_path):
    raw = _terabyte(tmp_path / "raw")
    clean = _preprocess(raw, tmp_path / "clean", "terabyte")
    day_5 = tmp_path / "raw" / "day_5"
    good = day_5.read_bytes()
    _write(day_5, [GOOD, "oops"])
    out = tmp_path / "p"
    with pytest.raises(ConfigError, match=re.escape(f"{day_5}:2: 1 tab-separated")):
        _preprocess(raw, out, "terabyte", workers=2)
    assert not (out / "meta.json").exists() and not (out / "day_5.json").exists()
    assert not list(out.glob("*.tmp"))  # the stopped workers' files are cleared
    day_5.write_bytes(good)
    done = [int(p.stem.split("_")[1]) for p in out.glob("day_*.json")]
    assert len(done) >= 4  # of days 0-4, at most one was still running
    for day in done:  # finished days' raw files are not read again
        _write(tmp_path / "raw" / f"day_{day}", ["not a criteo line"])
    resumed = _preprocess(raw, out, "terabyte", workers=2)
    assert resumed == clean and _files(out) == _files(tmp_path / "clean")


def test_complete_data_with_other_settings_is_an_error(tmp_path):
    raw = _write(tmp_path / "train.txt", HAND)
    _preprocess(raw, tmp_path / "p")
    with pytest.raises(ConfigError, match="--max-ind-range=-1 \\(not 5\\)"):
        _preprocess(raw, tmp_path / "p", max_ind_range=5)


def _ids(data: CriteoData, index: int) -> list[int]:
    """The line ids (I1) of this rank's slice of a batch (dense = log(id + 1))."""
    return np.rint(np.expm1(data.raw(index).dense[:, 0].astype(np.float64))).astype(int).tolist()


def test_kaggle_splits_are_the_references(tmp_path):
    raw = _write(tmp_path / "train.txt", _random_lines(np.random.default_rng(4), 100))
    meta = _preprocess(raw, tmp_path / "p")
    assert [d["rows"] for d in meta["days"]] == [15, 15, 14, 14, 14, 14, 14]

    def every(split):
        data = CriteoData(tmp_path / "p", split, 1000)
        return sum((_ids(data, i) for i in range(len(data))), [])

    assert every("train") == list(range(86))  # days 0-5
    assert every("test") == list(range(86, 93))  # day 6, first half (ceil)
    assert every("val") == list(range(93, 100))  # day 6, second half


def test_terabyte_test_and_val_halve_day_23(tmp_path):
    raw = _terabyte(tmp_path, per_day=5)
    _preprocess(raw, tmp_path / "p", "terabyte")
    train = CriteoData(tmp_path / "p", "train", 1000)
    assert train.rows == 23 * 5 and _ids(train, 0) == list(range(115))
    assert _ids(CriteoData(tmp_path / "p", "test", 10), 0) == [115, 116, 117]
    assert _ids(CriteoData(tmp_path / "p", "val", 10), 0) == [118, 119]


@pytest.fixture(scope="module")
def processed_100(tmp_path_factory) -> Path:
    """Kaggle layout, 100 lines: train = ids 0..85 (days of 15, 15, 14, 14, 14, 14)."""
    tmp = tmp_path_factory.mktemp("k100")
    raw = _write(tmp / "train.txt", _random_lines(np.random.default_rng(4), 100))
    _preprocess(raw, tmp / "p")
    return tmp / "p"


@pytest.mark.parametrize("randomize", ["none", "day", "total", "day-bijection", "total-bijection"])
def test_rank_slices_concatenate_to_the_global_batch(processed_100, randomize):
    full = CriteoData(processed_100, "train", 12, randomize=randomize, seed=3)
    assert len(full) == 8 and full.batch_size(7) == 2  # 86 = 7 * 12 + 2
    order = [_ids(full, i) for i in range(len(full))]
    for world in (2, 4):
        ranks = [
            CriteoData(processed_100, "train", 12, r, world, randomize=randomize, seed=3)
            for r in range(world)
        ]
        for i in range(len(full)):
            if full.batch_size(i) % world:
                with pytest.raises(ValueError, match="does not split evenly"):
                    ranks[0].raw(i)
                continue
            assert sum((_ids(rank, i) for rank in ranks), []) == order[i]
            raws = [rank.raw(i) for rank in ranks]
            want = full.raw(i)
            np.testing.assert_array_equal(np.concatenate([r.targets for r in raws]), want.targets)
            got = np.concatenate([r.values.reshape(26, -1) for r in raws], axis=1)
            np.testing.assert_array_equal(got, want.values.reshape(26, -1))
    flat = sum(order, [])
    assert sorted(flat) == list(range(86))  # every training row once per epoch
    if randomize == "none":
        assert flat == list(range(86))
    elif randomize.startswith("day"):  # shuffled within each day, days in order
        bounds = [0, 15, 30, 44, 58, 72, 86]
        for lo, hi in zip(bounds, bounds[1:]):
            assert sorted(flat[lo:hi]) == list(range(lo, hi)) and flat[lo:hi] != list(range(lo, hi))
    else:
        assert flat != list(range(86))
        other = CriteoData(processed_100, "train", 12, randomize=randomize, seed=4)
        assert sum((_ids(other, i) for i in range(8)), []) != flat  # the seed matters
    test = CriteoData(processed_100, "test", 12, randomize=randomize, seed=3)
    assert _ids(test, 0) == list(range(86, 93))  # evaluation data is never shuffled


def test_batches_are_torchrec_batches(processed_100):
    data = CriteoData(processed_100, "train", 10, num_batches=3)
    batches = list(data)
    assert len(batches) == 3 and len(list(data.iter_from(2))) == 1
    b = batches[0]
    assert b.dense_features.shape == (10, 13) and b.labels.shape == (10,)
    assert b.sparse_features.keys() == [f"cat_{i}" for i in range(26)]
    assert b.sparse_features.lengths().tolist() == [1] * 260


def test_torchrec_reads_the_processed_files(processed_100):
    from torchrec.datasets.criteo import InMemoryBinaryCriteoIterDataPipe

    paths = {w: [str(processed_100 / f"day_{d}_{w}.npy") for d in range(6)] for w in ("dense",
             "sparse", "labels")}  # fmt: skip
    # hashes: torchrec takes ids modulo them; ours are already below their table sizes, so a
    # modulo above every id changes nothing (torchrec < 1.9 needs the list, newer takes None)
    pipe = InMemoryBinaryCriteoIterDataPipe(
        "train", paths["dense"], paths["sparse"], paths["labels"], batch_size=86, rank=0,
        world_size=1, hashes=[1 << 31] * 26,
    )  # fmt: skip
    theirs = next(iter(pipe))
    ours = CriteoData(processed_100, "train", 86).raw(0)
    np.testing.assert_array_equal(theirs.dense_features.numpy(), ours.dense)
    np.testing.assert_array_equal(theirs.sparse_features.values().numpy(), ours.values)
    np.testing.assert_array_equal(theirs.labels.numpy(), ours.targets[:, 0])


def test_preprocess_command(tmp_path):
    raw = _write(tmp_path / "train.txt", _random_lines(np.random.default_rng(6), 30))
    cmd = [sys.executable, "-m", "dlrm_dist.data.criteo", "preprocess", "--raw-data-file"]
    out = tmp_path / "p"
    ok = subprocess.run(
        [*cmd, str(raw), "--processed-data-file", str(out), "--max-ind-range=50"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "preprocessed" in ok.stderr and json.loads((out / "meta.json").read_text())["counts"]
    _write(raw, [GOOD, "oops"])
    bad = subprocess.run(
        [*cmd, str(raw), "--processed-data-file", str(tmp_path / "q")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith(f"ERROR: {raw}:2: 1 tab-separated")


def _train_args(raw: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data-generation=dataset",
        f"--raw-data-file={raw}",
        f"--processed-data-file={out}",
        "--arch-sparse-feature-size=8",
        "--arch-mlp-bot=13-16-8",
        "--arch-mlp-top=16-1",
        "--loss-function=bce",
        "--print-freq=1000",
        "--progress-bar=false",
        *extra,
    ]


def test_trainer_preprocesses_then_trains(tmp_path, capsys):
    raw = _write(tmp_path / "train.txt", _random_lines(np.random.default_rng(7), 140))
    args = _train_args(raw, tmp_path / "p", "--mini-batch-size=20", "--test-freq=3")
    assert main(args) == 0
    out = capsys.readouterr()
    assert (tmp_path / "p" / "meta.json").exists() and "auc" in out.out
    assert "Finished training it 6/6 of epoch 0" in out.out  # 120 training rows
    counts = json.loads((tmp_path / "p" / "meta.json").read_text())["counts"]
    sizes = "-".join(map(str, counts))
    assert main([*args, f"--arch-embedding-size={sizes}"]) == 0  # given and matching: fine
    capsys.readouterr()
    assert main([*args, "--arch-embedding-size=4-3-2-1"]) == 2
    assert "does not match the data's 26 tables" in capsys.readouterr().err
    assert main([*args[:4], "--arch-mlp-bot=4-16-8", *args[5:]]) == 2
    assert "arch-dense-feature-size 13 does not match first dim of bottom mlp 4" in (
        capsys.readouterr().err
    )


def _planted(path: Path, n: int, seed: int, shuffle_labels: bool = False) -> Path:
    """Labels from a logistic model of I1, I2 (log scale), C1 and C2; the rest is noise."""
    rng = np.random.default_rng(seed)
    ints = rng.geometric(0.05, size=(n, 13)) - 1
    cats = rng.integers(0, 30, size=(n, 26))
    codes = rng.integers(0, 1 << 32, size=(26, 30))
    effect = rng.normal(0.0, 1.5, size=(2, 30))
    x = np.log1p(ints[:, :2])
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    logit = 1.5 * x[:, 0] - 1.5 * x[:, 1] + effect[0][cats[:, 0]] + effect[1][cats[:, 1]]
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    if shuffle_labels:
        labels = rng.permutation(labels)
    lines = [
        _line(y, row.tolist(), [int(codes[f, c]) for f, c in enumerate(crow)])
        for y, row, crow in zip(labels, ints, cats)
    ]
    return _write(path, lines)


def _learning_args(tmp_path: Path, shuffle: bool) -> list[str]:
    name = "shuffled" if shuffle else "signal"
    raw = _planted(tmp_path / f"{name}.txt", 7000, seed=11, shuffle_labels=shuffle)
    return _train_args(
        raw,
        tmp_path / f"{name}_p",  # preprocessed by rank 0 while rank 1 waits
        "--mini-batch-size=100",
        "--test-mini-batch-size=500",  # day 6's first half: one batch
        "--test-freq=1000",  # evaluate after each epoch
        "--optimizer=adagrad",
        "--learning-rate=0.1",
        "--nepochs=2",
    )


def test_it_learns_a_planted_signal_on_two_ranks_and_not_shuffled_labels(tmp_path):
    from tests.multiprocess import launch, train_many

    argvs = [_learning_args(tmp_path, shuffle) for shuffle in (False, True)]
    results = launch(2, train_many, argvs)
    signal, shuffled = (run["evals"][-1]["auc"] for run in results[0])
    assert [run["evals"] for run in results[1]] == [run["evals"] for run in results[0]]
    assert signal > 0.75, signal  # ~0.9
    assert abs(shuffled - 0.5) < 0.08, shuffled


def _bags(raw, sizes=SIZES) -> list[np.ndarray]:
    """Per table, the (n, k_t) bags of a RawBatch."""
    n = raw.targets.shape[0]
    ends = np.cumsum([n * k for k in sizes])
    return [v.reshape(n, k) for v, k in zip(np.split(raw.values, ends[:-1]), sizes)]


def test_multi_hot_bags_have_their_size_start_with_the_id_and_stay_in_the_table(processed_100):
    one = CriteoData(processed_100, "train", 20)
    multi = CriteoData(processed_100, "train", 20, multi_hot_sizes=SIZES)
    rows = one.counts
    for i in range(len(one)):
        raw, want = multi.raw(i), one.raw(i)
        n = want.targets.shape[0]
        np.testing.assert_array_equal(raw.lengths, np.repeat(np.array(SIZES)[:, None], n, 1))
        np.testing.assert_array_equal(raw.dense, want.dense)
        np.testing.assert_array_equal(raw.targets, want.targets)
        for t, bag in enumerate(_bags(raw)):
            np.testing.assert_array_equal(bag[:, 0], want.values.reshape(26, n)[t])
            assert bag.min() >= 0 and bag.max() < rows[t]
    batch = next(iter(multi))
    assert batch.sparse_features.lengths().tolist() == np.repeat(SIZES, 20).tolist()
    # sizes of 1 are the one-hot batches, value for value
    ones = CriteoData(processed_100, "train", 20, multi_hot_sizes=[1] * 26)
    for i in range(len(one)):
        np.testing.assert_array_equal(ones.raw(i).values, one.raw(i).values)
        np.testing.assert_array_equal(ones.raw(i).lengths, one.raw(i).lengths)


@pytest.mark.parametrize("distribution", ["uniform", "pareto"])
def test_an_id_always_expands_to_the_same_bag(processed_100, distribution):
    """Across batches, epochs, ranks (1 and 2), shuffling and splits."""
    seen: dict[tuple[int, int], list[int]] = {}

    def record(data: CriteoData) -> None:
        for i in range(len(data)):
            for t, bag in enumerate(_bags(data.raw(i))):
                for row in bag.tolist():
                    assert seen.setdefault((t, row[0]), row) == row, (t, row)

    kw = dict(multi_hot_sizes=SIZES, multi_hot_distribution=distribution, seed=3)
    full = CriteoData(processed_100, "train", 12, randomize="total", **kw)
    ranks = [CriteoData(processed_100, "train", 12, r, 2, "total", **kw) for r in range(2)]
    for i in range(len(full)):
        got = [rank.raw(i) for rank in ranks]
        want = _bags(full.raw(i))
        for t in range(26):
            np.testing.assert_array_equal(np.concatenate([_bags(g)[t] for g in got]), want[t])
    for data in (full, full, *ranks, CriteoData(processed_100, "test", 5, **kw)):
        record(data)
    assert any(len(set(bag)) > 1 for bag in seen.values())  # not all copies of the id


def test_trainer_trains_multi_hot_criteo(tmp_path, capsys):
    raw = _write(tmp_path / "train.txt", _random_lines(np.random.default_rng(7), 140))
    sizes = "-".join(map(str, SIZES))
    for distribution in ("uniform", "pareto"):
        args = _train_args(
            raw,
            tmp_path / "p",
            "--mini-batch-size=20",
            "--test-freq=3",
            f"--multi-hot-sizes={sizes}",
            f"--multi-hot-distribution={distribution}",
        )
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "auc" in out and "Finished training it 6/6 of epoch 0" in out


@pytest.mark.timeout(300)
def test_two_ranks_train_multi_hot_criteo_like_one(tmp_path):
    from dlrm_dist.cli import parse_args
    from dlrm_dist.train import run
    from tests.multiprocess import launch, train_many

    raw = _write(tmp_path / "train.txt", _random_lines(np.random.default_rng(9), 140))
    sizes = "-".join(map(str, SIZES))
    args = _train_args(
        raw,
        tmp_path / "p",
        "--mini-batch-size=20",
        "--test-mini-batch-size=10",
        "--test-freq=3",
        f"--multi-hot-sizes={sizes}",
        "--multi-hot-distribution=pareto",
        "--learning-rate=0.1",
    )
    one = run(parse_args(args))
    two = launch(2, train_many, [args])[0][0]
    assert len(one.losses) == 6
    np.testing.assert_allclose(two["losses"], one.losses, rtol=1e-5, atol=1e-7)
    for name, want in one.final_weights.items():
        np.testing.assert_allclose(two["weights"][name], want, rtol=1e-5, atol=1e-6)
    assert two["evals"][-1]["auc"] == pytest.approx(one.evals[-1]["auc"], abs=1e-6)


# --- the reference's numbers: its ids, its shuffles, its losses (tests/oracle.py) ---------


def _reference_lines(rng: np.random.Generator, n: int, first_id: int) -> list[str]:
    """n lines whose categories come from small pools (values repeat within and across
    days, so the id order matters), some fields empty, one line all empty."""
    out = []
    for i in range(n):
        ints = [first_id + i] + [
            None if rng.random() < 0.15 else int(rng.integers(-2, 60)) for _ in range(12)
        ]
        cats = [
            None if rng.random() < 0.1 else int(rng.integers(0, 4 + 2 * f)) * 7919 + f
            for f in range(26)
        ]
        out.append(_line(int(rng.random() < 0.4), ints, cats))
    out[n // 2] = _line(None, [None] * 13, [None] * 26)
    return out


def _write_crlf_at(path: Path, lines: list[str], crlf: int) -> Path:
    """Lines ending in LF, line `crlf` in CRLF, the last one without its newline."""
    ends = ["\r\n" if i == crlf else "\n" for i in range(len(lines))]
    ends[-1] = ""
    path.write_bytes("".join(line + end for line, end in zip(lines, ends)).encode())
    return path


def _reference_raw(tmp_path: Path, data_set: str) -> tuple[Path, list[Path]]:
    """Kaggle: 70 lines (7 days of 10); Terabyte: 24 days of 4 lines."""
    rng = np.random.default_rng(11)
    tmp_path.mkdir(parents=True, exist_ok=True)
    if data_set == "kaggle":
        raw = _write_crlf_at(tmp_path / "train.txt", _reference_lines(rng, 70, 0), crlf=13)
        return raw, [raw]
    paths = [
        _write_crlf_at(tmp_path / f"day_{d}", _reference_lines(rng, 4, 4 * d), crlf=d % 4)
        for d in range(24)
    ]
    return tmp_path / "day", paths


@pytest.mark.parametrize("max_ind_range", [-1, 13])
@pytest.mark.parametrize("data_set", ["kaggle", "terabyte"])
def test_ids_dense_and_labels_are_the_references(tmp_path, data_set, max_ind_range):
    raw, paths = _reference_raw(tmp_path / "raw", data_set)
    want = oracle_criteo_preprocess(oracle_criteo_days(paths, data_set == "kaggle"), max_ind_range)
    days = criteo_files.DAYS[data_set]
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        meta = _preprocess(raw, out, data_set, max_ind_range=max_ind_range, workers=workers)
        dense, sparse, labels = _arrays(out, days)
        np.testing.assert_array_equal(sparse, want["X_cat"])
        np.testing.assert_array_equal(labels[:, 0], want["y"])
        log = np.log(want["X_int"].astype(np.float64) + 1)
        np.testing.assert_allclose(dense, log, rtol=1e-6)
        assert meta["counts"] == want["counts"]
        assert [d["rows"] for d in meta["days"]] == want["day_rows"]
    ids = want["X_cat"][:, 0].tolist()
    assert set(ids[:10]) & set(ids[-10:])  # values repeat across days
    assert _files(tmp_path / "w2") == _files(tmp_path / "w1")  # byte for byte


_SHUFFLES = [("none", False), ("day", False), ("total", False), ("day", True), ("total", True)]


def _reference_run(raw: Path, out: Path, randomize: str, memory_map: bool) -> list[str]:
    extra = ["--memory-map"] if memory_map else []
    return _train_args(
        raw,
        out,
        "--mini-batch-size=6",
        "--learning-rate=0.1",
        "--numpy-rand-seed=7",
        f"--data-randomize={randomize}",
        *extra,
    )


def _oracle_run(paths: list[Path], randomize: str, memory_map: bool) -> dict:
    data = oracle_criteo_preprocess(oracle_criteo_days(paths, kaggle=True))
    return oracle_train(
        seed=7,
        m_spa=8,
        ln_emb=data["counts"],
        ln_bot=[13, 16, 8],
        ln_top_user=[16, 1],
        loss_function="bce",
        learning_rate=0.1,
        data_size=0,
        mini_batch_size=6,
        criteo={**data, "randomize": randomize, "memory_map": memory_map},
    )


@pytest.mark.parametrize(("randomize", "memory_map"), _SHUFFLES)
def test_losses_and_weights_are_the_references(tmp_path, randomize, memory_map):
    from dlrm_dist.arch import derive_arch, parameter_order
    from dlrm_dist.cli import parse_args
    from dlrm_dist.data.sources import dataset_tables
    from dlrm_dist.train import run

    raw, paths = _reference_raw(tmp_path / "raw", "kaggle")
    argv = _reference_run(raw, tmp_path / "p", randomize, memory_map)
    ours = run(parse_args(argv))
    want = _oracle_run(paths, randomize, memory_map)
    assert len(ours.losses) == len(want["losses"]) == 10  # 60 training rows, batches of 6
    np.testing.assert_allclose(ours.losses, want["losses"], rtol=1e-5, atol=1e-7)
    cfg = dataset_tables(parse_args(argv), 0)
    names = parameter_order(derive_arch(cfg.model, 13))
    for name, value in zip(names, want["params"], strict=True):
        np.testing.assert_allclose(ours.final_weights[name], value, rtol=1e-4, atol=1e-6)
    if randomize != "none":  # the shuffle matters: the file order gives other losses
        plain = _oracle_run(paths, "none", False)["losses"]
        assert not np.allclose(want["losses"], plain, rtol=1e-3)


@pytest.mark.timeout(400)
def test_two_ranks_give_the_references_losses(tmp_path):
    from tests.multiprocess import launch, train_many

    raw, paths = _reference_raw(tmp_path / "raw", "kaggle")
    _preprocess(raw, tmp_path / "p")  # before the ranks start: the runs share it
    argvs = [_reference_run(raw, tmp_path / "p", r, m) for r, m in _SHUFFLES]
    ranks = launch(2, train_many, argvs)
    for i, (randomize, memory_map) in enumerate(_SHUFFLES):
        want = _oracle_run(paths, randomize, memory_map)["losses"]
        for rank in (0, 1):
            got = ranks[rank][i]["losses"]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=str(i))


def _make_stale(directory: Path) -> None:
    """Turn processed data into what dlrm_dist wrote before format 2 (sorted ids)."""
    meta = json.loads((directory / "meta.json").read_text())
    meta.pop("id_order")
    meta["format"] = 1
    (directory / "meta.json").write_text(json.dumps(meta))


def test_data_with_the_old_sorted_ids_is_rebuilt_or_refused(tmp_path, caplog, capsys):
    raw, _ = _reference_raw(tmp_path / "raw", "kaggle")
    fresh = _preprocess(raw, tmp_path / "fresh")
    Preprocessor(Settings(), str(raw), tmp_path / "old", id_order="sorted").run()
    _, sorted_ids, _ = _arrays(tmp_path / "old", 7)
    assert (sorted_ids != _arrays(tmp_path / "fresh", 7)[1]).any()  # the orders differ here
    _make_stale(tmp_path / "old")
    with pytest.raises(ConfigError, match="older dlrm_dist, with each feature's ids in sorted"):
        CriteoData(tmp_path / "old", "train", 4)  # never read as if they were the new ids
    with pytest.raises(ConfigError) as err:  # no raw data to rebuild from: refused
        Preprocessor(Settings(), "", tmp_path / "old").run()
    assert "pass --raw-data-file to rebuild it" in str(err.value) and "\n" not in str(err.value)
    shutil.copytree(tmp_path / "old", tmp_path / "old2")
    with caplog.at_level("WARNING", logger="dlrm_dist"):  # the raw files are there: rebuilt
        rebuilt = _preprocess(raw, tmp_path / "old")
    assert "rebuilding it from" in caplog.text
    assert rebuilt == fresh and _files(tmp_path / "old") == _files(tmp_path / "fresh")
    assert main(_train_args("", tmp_path / "old2")) == 2  # the trainer: one line, exit 2
    assert "sorted order" in capsys.readouterr().err.strip().splitlines()[-1]


def test_an_interrupted_run_of_the_old_order_starts_over(tmp_path, monkeypatch, caplog):
    raw, _ = _reference_raw(tmp_path / "raw", "terabyte")
    clean = _preprocess(raw, tmp_path / "clean", "terabyte")
    real = _interrupt_at_day(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        Preprocessor(Settings("terabyte"), str(raw), tmp_path / "p", id_order="sorted").run()
    monkeypatch.setattr(Preprocessor, "_parse_day", real)
    settings = json.loads((tmp_path / "p" / "settings.json").read_text())
    settings.pop("id_order")  # as the old format wrote it
    (tmp_path / "p" / "settings.json").write_text(json.dumps(settings))
    with caplog.at_level("WARNING", logger="dlrm_dist"):
        resumed = _preprocess(raw, tmp_path / "p", "terabyte")
    assert "numbered ids in sorted order: starting over" in caplog.text
    assert resumed == clean and _files(tmp_path / "p") == _files(tmp_path / "clean")
