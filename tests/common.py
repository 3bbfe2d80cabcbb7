"""What several test modules share: the tiny training job and a file-tree fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path

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


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file below directory, by relative path: equal before and after
    means nothing was written, moved or removed there."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
