"""The CPU benchmark script runs end to end at a tiny size and its two sides agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_benchmark_smoke_reports_identical_data_and_the_time_breakdown():
    proc = subprocess.run(
        [sys.executable, "benchmarks/cpu_vs_reference.py", "--smoke", "--configs", "B"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "| B | 100 | 3 |" in out
    rows = [line for line in out.splitlines() if line.startswith("| B |")]
    assert len(rows) == 3  # training, time breakdown, data generation
    breakdown = rows[1].strip("|").split("|")
    assert len(breakdown) == 8 and breakdown[5].strip() == "20x"
    assert all(float(cell) > 0 for i, cell in enumerate(breakdown) if i not in (0, 5))
    assert "batch 0 identical" in out and "| yes |" in out


def test_ranks_benchmark_smoke_runs_torchrun_with_one_and_two_ranks():
    proc = subprocess.run(
        [sys.executable, "benchmarks/ranks_cpu.py", "--smoke", "--configs", "C"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| C |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 4 and cells[3].endswith("x")
    assert float(cells[1].split()[0].replace(",", "")) > 0


def test_gpu_benchmark_smoke_runs_the_same_code_tiny_on_cpu():
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| MLPerf DCNv2 | 128 |" in out and "| config C cpu | 512 |" in out
    assert "UVM caching: skipped, fused_uvm_caching needs CUDA" in out
    parts = {
        line.split("|")[1].strip(): float(line.split("|")[2])
        for line in out.splitlines()
        if line.startswith("| ") and line.count("|") == 3 and "ms/step" not in line
    }
    assert parts["MLP + interaction"] > 0 and parts["embedding backward + update"] > 0
    assert parts["whole step"] > 0
    assert "of the H200's 4.8 TB/s" in out


def test_criteo_loader_benchmark_smoke_reports_every_measurement():
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/criteo_loader.py",
            "--lines=4000",
            "--batch=256",
            "--train-batches=3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for what in (
        "preprocess vocab:",
        "preprocess hash:",
        "raw, randomize=total, rank 0 of 4:",
        "batches, randomize=none, 1 rank:",
        "batches, multi-hot uniform, 1 rank:",
        "batches, multi-hot pareto, 1 rank:",
        "training one-hot, 1 rank, 1 thread:",
        "training multi-hot, 1 rank, 1 thread:",
    ):
        line = next((x for x in out.splitlines() if x.startswith(what)), None)
        assert line is not None, (what, out)
        assert float(line[len(what) :].split()[0].replace(",", "")) > 0, line
