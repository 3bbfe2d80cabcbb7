"""The benchmark scripts and the GPU machine's check run end to end at a tiny size on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.common import ROOT


def _benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    """benchmarks/SCRIPT ARGS run to its end (it must exit 0); its output."""
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_cpu_benchmark_smoke_reports_identical_data_and_the_time_breakdown():
    proc = _benchmark("cpu_vs_reference.py", "--smoke", "--configs", "B")
    out = proc.stdout
    assert "| B | 100 | 3 |" in out
    rows = [line for line in out.splitlines() if line.startswith("| B |")]
    assert len(rows) == 3  # training, time breakdown, data generation
    breakdown = rows[1].strip("|").split("|")
    assert len(breakdown) == 8 and breakdown[5].strip() == "20x"
    assert all(float(cell) > 0 for i, cell in enumerate(breakdown) if i not in (0, 5))
    assert "batch 0 identical" in out and "| yes |" in out


STAND_IN = """
import sys, time
import pytest
import torch
import sklearn.metrics  # the reference imports it; the harness checks it can
n = int(next(a for a in sys.argv if a.startswith("--num-batches=")).split("=")[1])
time.sleep(0.5)  # a fixed cost: start-up
with torch.autograd.profiler.profile(False, use_cuda=False, record_shapes=True):
    for i in range(n):
        time.sleep(0.005)  # 100 samples (config B's batch) per 5 ms: 20,000 samples/s
        if i == 0:
            print(f"Finished training it 1/{n} of epoch 0, stand-in", flush=True)
"""


def test_cpu_benchmark_times_whole_processes_against_a_reference_checkout(tmp_path):
    """A stand-in checkout (it calls the profiler the reference's way, use_cuda, which
    today's torch refuses unless the launcher bridges it): the marginal rate and fixed
    cost come out of the two sizes as the stand-in spends them."""
    ref, site = tmp_path / "dlrm", tmp_path / "site"
    ref.mkdir()
    (ref / "dlrm_s_pytorch.py").write_text(STAND_IN)
    (site / "sklearn").mkdir(parents=True)
    (site / "sklearn" / "__init__.py").write_text("")
    (site / "sklearn" / "metrics.py").write_text("")
    # 600 extra batches: 3 s of the stand-in's sleeps, so that a start's jitter (a few
    # tenths of a second) cannot move its marginal rate out of the bounds below (200
    # batches, 1 s, once measured 52,709 in CI)
    args = ["--configs", "B", "--repeats", "1", "--sizes", "5,605"]
    proc = _benchmark(
        "cpu_vs_reference.py",
        "--reference-dir",
        str(ref),
        "--reference-pythonpath",
        str(site),
        *args,
    )
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| B | 100 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    rate = float(cells[3].split()[0].replace(",", ""))
    assert 14_000 < rate < 26_000  # 60,000 samples in 600 x 5 ms, give or take a start's noise
    fixed = float(cells[7].split()[0])
    assert 0.5 < fixed < 5.0  # the stand-in's 0.5 s and the interpreter's start
    first = float(cells[9].split()[0])
    assert 0.5 < first < 5.0
    ours = float(cells[2].split()[0].replace(",", ""))
    # ours: a number (at 2 x 20,000 samples its marginal rate is noise: only the stand-in's
    # known costs are asserted)
    assert math.isfinite(ours) and cells[4].endswith("x")
    # one repeat: its paired ratio is the two rates' (each rounded in its cell)
    assert float(cells[10].split("x")[0]) == pytest.approx(ours / rate, abs=0.01)
    floor = next(
        line for line in proc.stdout.splitlines() if line.startswith("| B | ") and "%" in line
    )
    median, spread = floor.split("|")[2].split()  # `median (min-max)` over the repeats
    low, high = (float(v) for v in spread.strip("()").split("-"))
    assert 0 < low <= float(median) <= high
    share, _, per_repeat = (floor.split("|")[i].strip() for i in (4, 5, 6))
    assert per_repeat.startswith(f"{share} ")  # one repeat: its share is the share


def test_cpu_benchmark_says_what_to_do_when_the_reference_is_missing(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/cpu_vs_reference.py", "--reference-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "dlrm_s_pytorch.py does not exist: --reference-dir must be a checkout" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cpu_benchmark_beside_busy_smoke_prints_both_rates():
    proc = _benchmark("cpu_vs_reference.py", "--beside-busy", "--smoke", "--configs", "B")
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| B |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 5 and cells[3].endswith("x") and cells[4] == "2.5x at most"


def test_cpu_benchmark_against_flags_smoke_prints_both_rates_and_their_ratio():
    flags = "--against-flags=--draw-ahead=false"
    proc = _benchmark("cpu_vs_reference.py", flags, "--smoke", "--configs", "B")
    assert "| config | ours | with --draw-ahead=false | ratio |" in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| B |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    ours, switched = (float(c.split()[0].replace(",", "")) for c in cells[1:3])
    assert len(cells) == 4 and cells[3].endswith("x")
    assert float(cells[3][:-1]) == pytest.approx(ours / switched, rel=0.01, abs=0.01)


def test_the_reference_launcher_leaves_our_spin_count_out_of_the_references_runs():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import reference_run

    from dlrm_dist import threads

    assert reference_run.OUR_SPINCOUNT == threads.SPINCOUNT


def test_ranks_benchmark_smoke_runs_torchrun_with_one_and_two_ranks():
    proc = _benchmark("ranks_cpu.py", "--smoke", "--configs", "C")
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| C |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 4 and cells[3].endswith("x")
    assert float(cells[1].split()[0].replace(",", "")) > 0


def _gpu_check(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "scripts/gpu_check.sh", str(out), "--smoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )


def test_gpu_check_smoke_runs_every_stage_and_the_benchmark_tiny_on_cpu(tmp_path):
    proc = _gpu_check(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    stages = {s["name"]: s for s in summary["stages"]}
    assert summary["ok"] and [s["status"] for s in stages.values()] == ["passed"] * 3
    assert stages["env"]["details"]["torch"] == torch.__version__
    tests = stages["tests"]["details"]  # every gpu-marked test, skipped without CUDA
    assert tests["skipped"] >= 5 and tests["passed"] == tests["failed"] == tests["errors"] == 0
    runs = {r["name"]: r for r in stages["benchmark"]["details"]["runs"]}
    assert set(runs) == {"MLPerf DCNv2", "config C cpu"}
    assert all(r["samples_per_s_min"] > 0 and r["step_ms"] > 0 for r in runs.values())
    table = (tmp_path / "benchmark.md").read_text()
    assert "| MLPerf DCNv2 | 128 |" in table and "| config C cpu | 512 |" in table
    assert "UVM caching: skipped, fused_uvm_caching needs CUDA" in table
    parts = {
        line.split("|")[1].strip(): float(line.split("|")[2])
        for line in table.splitlines()
        if line.startswith("| ") and line.count("|") == 3 and "ms/step" not in line
    }
    assert parts["MLP + interaction"] > 0 and parts["embedding backward + update"] > 0
    assert parts["whole step"] > 0 and "of the H200's 4.8 TB/s" in table
    screen = proc.stdout.splitlines()
    assert len(screen) <= 24 and any(line.split()[:2] == ["tests", "0"] for line in screen)
    for name in ("env", "tests", "benchmark"):
        assert (tmp_path / f"{name}.log").exists()


def test_gpu_check_stops_a_stage_at_its_budget_and_runs_the_next(tmp_path):
    # the environment probe imports torch and torchrec: more than a second
    proc = _gpu_check(tmp_path, "--budgets=env=1", "--stages=env,tests")
    assert proc.returncode == 1
    stages = {s["name"]: s for s in json.loads((tmp_path / "summary.json").read_text())["stages"]}
    assert stages["env"]["status"] == "timeout" and stages["env"]["seconds"] < 10
    assert stages["tests"]["status"] == "passed"
    assert stages["benchmark"]["status"] == "not run"
    assert "stopped at its budget of 1 s" in (tmp_path / "env.log").read_text()


def test_criteo_loader_benchmark_smoke_reports_every_measurement():
    proc = _benchmark("criteo_loader.py", "--lines=4000", "--batch=256", "--train-batches=3")
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


def test_data_generators_benchmark_smoke_prints_the_table():
    proc = _benchmark("data_generators.py", "--smoke")
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| C |", "| L |"))]
    assert len(rows) == 2 and "- machine:" in proc.stdout
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 9 and all(c.endswith("x") and float(c[:-1]) > 0 for c in cells[7:])


def test_random_fast_torch_benchmark_smoke_prints_the_ratio_and_identical_batches():
    proc = _benchmark("random_fast_torch.py", "--smoke")
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| torch-")]
    assert rows and all(ln.endswith("| yes |") for ln in rows), proc.stdout
    ratio = rows[0].split("|")[4].strip()
    assert ratio.endswith("x") and float(ratio[:-1]) > 0


def test_startup_benchmark_splits_each_trees_start_up_into_its_phases():
    proc = _benchmark("startup.py", "--configs", "B", "--repeats", "1", "--against-tree", ".")
    rows = [line.strip("|").split("|") for line in proc.stdout.splitlines()]
    rows = [r for r in rows if len(r) == 8 and r[0].strip() in (".", "this tree")]
    assert len(rows) == 2
    for row in rows:
        seconds = [float(cell.split()[0]) for cell in row[1:7]]  # the phases, then the whole
        interpreter, torch_import, stack, setup, first_step, whole = seconds
        assert torch_import > 0.1 and stack > 0.1 and setup > 0 and first_step >= 0
        assert whole == pytest.approx(sum(seconds[:5]), abs=0.03)  # each median rounded
        assert 0 < float(row[7].strip().rstrip("%")) < 100
