"""What the test modules share: the tiny training job, a free port, a file-tree
fingerprint."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import numpy as np

from dlrm_dist.data.batch_source import RawBatch

ROOT = Path(__file__).resolve().parents[1]  # the checkout

# 4 small tables, 6 batches of 16 x 2 epochs = 12 steps, adagrad, a log line per step
TINY_JOB = [
    "--arch-embedding-size=20-30-40-50",
    "--arch-sparse-feature-size=4",
    "--arch-mlp-bot=5-8-4",
    "--arch-mlp-top=6-1",
    "--loss-function=bce",
    "--round-targets=true",
    "--mini-batch-size=16",
    "--num-batches=6",
    "--nepochs=2",
    "--learning-rate=0.1",
    "--optimizer=adagrad",
    "--print-freq=1",
    "--progress-bar=false",
]


def tiny_job(*extra: str, **flags: object) -> list[str]:
    """TINY_JOB with flags changed (keyword = flag name with underscores: num_batches=20
    gives --num-batches=20) and extra arguments appended."""
    argv = {a.split("=", 1)[0]: a for a in TINY_JOB}
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        argv[flag] = f"{flag}={str(value).lower() if isinstance(value, bool) else value}"
    return [*argv.values(), *extra]


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now (for a rendezvous or a store)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def per_table(raw: RawBatch) -> list[np.ndarray]:
    """Values split into the (table-major) tables, by the lengths."""
    ends = np.cumsum(raw.lengths.sum(axis=1))
    return [raw.values[a:b] for a, b in zip(np.concatenate(([0], ends[:-1])), ends)]


def concat(slices: list[RawBatch]) -> RawBatch:
    """The global batch the slices of ranks 0..W-1 make (values are table-major, split here
    from the lengths, not by the code under test)."""
    tables = zip(*(per_table(s) for s in slices))
    return RawBatch(
        dense=np.concatenate([s.dense for s in slices]),
        lengths=np.concatenate([s.lengths for s in slices], axis=1),
        values=np.concatenate([np.concatenate(t) for t in tables]),
        targets=np.concatenate([s.targets for s in slices]),
    )


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file below directory, by relative path: equal before and after
    means nothing was written, moved or removed there."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
