"""What a run records for plotting: rank 0 appends one JSON object per log step and per
evaluation to <run-dir>/metrics.jsonl and mirrors the numbers into TensorBoard event
files (<run-dir>/tensorboard); `python -m dlrm_dist.report RUN_DIR` plots them.
Also the profiler window of `--enable-profiling`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from dlrm_dist.config import MetricsConfig

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Records {"kind": "train"|"eval"|"summary", "step": global step, "time": unix s,
    ...numbers}. Only rank 0 writes; other ranks get a writer that does nothing."""

    def __init__(self, run_dir: str | Path, rank: int = 0, config: dict | None = None) -> None:
        self.enabled = bool(run_dir) and rank == 0
        self._file = self._tb = None
        if not self.enabled:
            return
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (self.dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        self._file = (self.dir / METRICS_FILE).open("a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"))

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(f"{kind}/{key}", value, step)

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._tb.close()
            self._file = self._tb = None


def numbered_run_dir(base: str | Path) -> Path:
    """A new directory base/NNN (001, 002, ...: one past the highest number there), made
    here, so runs into the same base never mix (and two starting at once get two)."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    while True:
        taken = [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()]
        path = base / f"{max(taken, default=0) + 1:03d}"
        try:
            path.mkdir()
            return path
        except FileExistsError:  # another run took it first
            continue


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process so far: the CUDA allocator's on a GPU, else the
    resident set size (host memory)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


class Profiler:
    """`--enable-profiling`: trace steps [start, start + steps) with torch.profiler and
    write a Chrome/TensorBoard trace to <run-dir>/profile (rank 0 and the others, one
    file per rank). `step()` after every training step; a no-op when disabled."""

    def __init__(self, cfg: MetricsConfig, rank: int) -> None:
        self._prof = None
        if not cfg.enable_profiling:
            return
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self.dir = Path(cfg.run_dir) / "profile"
        self._prof = profile(
            activities=activities,
            schedule=schedule(
                wait=max(cfg.profile_start - 2, 0), warmup=1, active=cfg.profile_steps, repeat=1
            ),
            on_trace_ready=tensorboard_trace_handler(str(self.dir), worker_name=f"rank{rank}"),
            record_shapes=True,
        )
        self._prof.__enter__()

    def step(self) -> None:
        if self._prof is not None:
            self._prof.step()

    def __enter__(self) -> Profiler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._prof is not None:
            self._prof.__exit__(None, None, None)
            self._prof = None
