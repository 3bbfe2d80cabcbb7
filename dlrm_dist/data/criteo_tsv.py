"""Reading the raw Criteo TSV (Kaggle `train.txt`, Terabyte `day_0` ... `day_23`, plain or
gzipped), vectorized over blocks of lines.

A line is `label \\t I1 ... I13 \\t C1 ... C26`: the label 0 or 1, 13 decimal integers (may be
negative), 26 categorical values as hex strings (Criteo's are 32-bit: at most 8 hex digits).
Any field may be empty (read as 0, as the reference does). Lines end in LF or CRLF; a last line
without its newline counts. A line with another number of fields, an integer field that is
not a (signed, at most 18-digit) decimal, a category that is not 1-8 hex digits, or a label
other than 0/1 is malformed: `parse_block` returns its index and `describe` says what is wrong.

Numbers come from numpy over the whole block, not from a Python loop per field: every
field's characters are gathered right-aligned into a (lines, fields, digits) array, the digits
looked up in a table, then packed (hex: nibble pairs viewed as big-endian uint32) or summed
with powers of ten. About 2-3x `int(x, 16)` per field in Python, validation included.

The feature counts equal torchrec.datasets.criteo's INT_FEATURE_COUNT / CAT_FEATURE_COUNT (a
test checks); they are not imported from there because importing torchrec takes ~5 s and the
preprocessing command needs only numpy.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlrm_dist.config import CRITEO_TABLES
from dlrm_dist.errors import ConfigError

NUM_DENSE = 13  # integer features I1..I13
NUM_SPARSE = CRITEO_TABLES  # categorical features C1..C26 (the config's multi-hot rule reads it)
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
FIELD_NAMES = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
MAX_INT_DIGITS = 18  # fits int64
MAX_HEX_DIGITS = 8  # Criteo's categories are 32-bit hashes
_PAD = MAX_INT_DIGITS  # "0"s before a block, so every field has that many characters before it

BLOCK_BYTES = 1 << 20  # read size; memory per block is ~100x it (cache-sized is fastest)
MAX_LINE_BYTES = 1 << 20  # a longer "line" means this is not a Criteo file

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_DEC = np.full(256, 255, dtype=np.uint8)
_DEC[48:58] = np.arange(10)
_INT_RE = re.compile(rb"-?[0-9]{1,%d}" % MAX_INT_DIGITS)
_HEX_RE = re.compile(rb"[0-9a-fA-F]{1,%d}" % MAX_HEX_DIGITS)


@dataclass
class ParsedBlock:
    """The well-formed lines of a block, in order, and where the malformed ones are.

    labels (n,) int32, dense (n, 13) int64 (raw integers), sparse (n, 26) uint32 (the hex
    values); bad (k,) the malformed lines' indices in the block (0-based), bad_spans (k, 2)
    their byte ranges (without the line end)."""

    labels: np.ndarray
    dense: np.ndarray
    sparse: np.ndarray
    bad: np.ndarray
    bad_spans: np.ndarray


def is_gzip(path: str | Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def read_blocks(
    path: str | Path,
    block_bytes: int = BLOCK_BYTES,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """(first line number, 1-based; bytes) of blocks of whole lines, each ending in b"\\n"
    (one is added after a last line without it). Gzip is detected by its magic bytes.
    on_progress gets the bytes read so far from the file on disk (compressed, for gzip)."""
    line = 1
    with open(path, "rb") as raw:
        src = gzip.GzipFile(fileobj=raw) if is_gzip(path) else raw
        tail = b""
        while True:
            chunk = src.read(block_bytes)
            if on_progress is not None:
                on_progress(raw.tell())
            if not chunk:
                break
            buf = tail + chunk if tail else chunk
            cut = buf.rfind(b"\n") + 1
            if cut == 0:
                if len(buf) > MAX_LINE_BYTES:
                    raise ConfigError(
                        f"{path}:{line}: no line end within {MAX_LINE_BYTES} bytes; "
                        "is this a Criteo TSV file?"
                    )
                tail = buf
                continue
            tail = buf[cut:]
            block = buf[:cut]
            yield line, block
            line += block.count(b"\n")
        if tail:
            yield line, tail + b"\n"


def count_lines(path: str | Path, on_progress: Callable[[int], None] | None = None) -> int:
    """Lines in the file, a last one without its newline included."""
    return sum(block.count(b"\n") for _, block in read_blocks(path, on_progress=on_progress))


def parse_block(block: bytes) -> ParsedBlock:
    """Parse a block of whole lines (each ending in b"\\n"); see ParsedBlock."""
    a = np.frombuffer(block, dtype=np.uint8)
    nl = np.flatnonzero(a == 10)
    starts = np.empty(nl.size, dtype=np.int64)
    starts[:1] = 0
    starts[1:] = nl[:-1] + 1
    ends = nl.astype(np.int64)
    ends[(ends > starts) & (a[ends - 1] == 13)] -= 1  # CRLF
    tabs = np.flatnonzero(a == 9)
    first_tab = np.searchsorted(tabs, starts)
    bad = np.searchsorted(tabs, nl) - first_tab != NUM_FIELDS - 1
    good = np.flatnonzero(~bad)
    # field f of good line i spans [fs[i, f], fe[i, f])
    t = tabs[first_tab[good, None] + np.arange(NUM_FIELDS - 1)]
    fs = np.concatenate([starts[good, None], t + 1], axis=1)
    fe = np.concatenate([t, ends[good, None]], axis=1)
    length = fe - fs
    line_bad = np.zeros(good.size, dtype=bool)

    n0 = length[:, 0]
    c0 = a[np.where(n0 > 0, fs[:, 0], 0)].astype(np.int16)
    line_bad |= (n0 > 1) | ((n0 == 1) & ((c0 < 48) | (c0 > 49)))
    labels = np.where(n0 == 1, c0 - 48, 0).astype(np.int32)

    padded = np.frombuffer(b"0" * _PAD + block, dtype=np.uint8)
    ints = slice(1, 1 + NUM_DENSE)
    dense, ok = _parse_ints(a, padded, fs[:, ints], fe[:, ints])
    line_bad |= ~ok.all(axis=1)
    cats = slice(1 + NUM_DENSE, NUM_FIELDS)
    sparse, ok = _parse_hex(padded, fs[:, cats], fe[:, cats])
    line_bad |= ~ok.all(axis=1)

    bad[good[line_bad]] = True
    keep = ~line_bad
    bad_idx = np.flatnonzero(bad)
    return ParsedBlock(
        labels=labels[keep],
        dense=dense[keep],
        sparse=sparse[keep],
        bad=bad_idx,
        bad_spans=np.stack([starts[bad_idx], ends[bad_idx]], axis=1),
    )


def _right_aligned(padded: np.ndarray, end: np.ndarray, digits: np.ndarray, width: int):
    """Each field's last `width` characters, the ones before its `digits` set to "0":
    (n, k, width) uint8, right-aligned. `padded` is the block after _PAD "0"s; end (n, k) are
    the fields' ends in the block. One row gather from a sliding-window view, no per-character
    index arrays."""
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    chars = windows[end + (_PAD - width)]
    return np.where(np.arange(width) < (width - digits)[..., None], np.uint8(48), chars)


def _parse_ints(a: np.ndarray, padded: np.ndarray, start: np.ndarray, end: np.ndarray):
    """Signed decimals (empty = 0): values (n, k) int64 and ok (n, k) bool."""
    length = end - start
    neg = (length > 0) & (a[np.where(length > 0, start, 0)] == 45)
    digits = length - neg
    ok = ~(neg & (digits == 0)) & (digits <= MAX_INT_DIGITS)
    digits = np.where(ok, digits, 0)
    end = np.where(ok, end, 0)
    width = max(int(digits.max(initial=0)), 1)
    d = _DEC[_right_aligned(padded, end, digits, width)]
    ok &= (d != 255).all(axis=-1)
    d[d == 255] = 0
    value = d.astype(np.int64) @ (10 ** np.arange(width - 1, -1, -1, dtype=np.int64))
    return np.where(neg, -value, value), ok


def _parse_hex(padded: np.ndarray, start: np.ndarray, end: np.ndarray):
    """Hex values of at most 8 digits (empty = 0): values (n, k) uint32 and ok (n, k)."""
    digits = end - start
    ok = digits <= MAX_HEX_DIGITS
    digits = np.where(ok, digits, 0)
    d = _HEX[_right_aligned(padded, np.where(ok, end, 0), digits, MAX_HEX_DIGITS)]
    ok &= (d != 255).all(axis=-1)
    packed = (d[..., 0::2] << 4) | (d[..., 1::2] & 15)  # (n, k, 4) bytes, big-endian
    return packed.view(">u4")[..., 0].astype(np.uint32), ok


def describe(line: bytes) -> str:
    """What is wrong with a malformed line (without its line end), in words."""
    fields = line.split(b"\t")
    if len(fields) != NUM_FIELDS:
        return (
            f"{len(fields)} tab-separated fields, expected {NUM_FIELDS} "
            f"(label, {NUM_DENSE} integers, {NUM_SPARSE} categorical)"
        )
    for i, value in enumerate(fields):
        name = f"field {i + 1} ({FIELD_NAMES[i]})"
        shown = value[:24].decode("utf-8", "replace") + ("..." if len(value) > 24 else "")
        if value == b"":
            continue
        if i == 0 and value not in (b"0", b"1"):
            return f"{name} {shown!r} is not 0 or 1"
        if 1 <= i <= NUM_DENSE and not _INT_RE.fullmatch(value):
            return f"{name} {shown!r} is not an integer of at most {MAX_INT_DIGITS} digits"
        if i > NUM_DENSE and not _HEX_RE.fullmatch(value):
            return f"{name} {shown!r} is not a hex category of 1-{MAX_HEX_DIGITS} digits"
    return "malformed line"  # pragma: no cover (parse_block and describe agree; tested)
