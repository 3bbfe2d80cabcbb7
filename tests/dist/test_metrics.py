"""Metrics a run records (JSONL, TensorBoard), the report's plots and summary, the
profiler trace, and the extended log line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from dlrm_dist.cli import parse_args
from dlrm_dist.lr_policy import lr_at
from dlrm_dist.metrics import read_metrics
from dlrm_dist.report import plot
from dlrm_dist.train import run
from tests.common import ROOT
from tests.multiprocess import launch, train_many
from tests.unit.test_metrics import ARGV


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    argv = [*ARGV, f"--run-dir={run_dir}", "--enable-profiling", "--profile-start=3"]
    argv += ["--profile-steps=2"]
    result = run(parse_args(argv))
    return run_dir, result


def test_train_records_are_the_window_means_of_the_step_losses(recorded):
    run_dir, result = recorded
    train = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    # logged at steps 4, 6 (evaluation), 8, 12 (print-freq 4, test-freq 6, last)
    assert [r["step"] for r in train] == [4, 6, 8, 12]
    bounds = [0, 4, 6, 8, 12]
    for r, lo, hi in zip(train, bounds[:-1], bounds[1:]):
        assert r["loss"] == pytest.approx(np.mean(result.losses[lo:hi]), rel=1e-9)
        assert r["lr"] == pytest.approx(lr_at(0.2, r["step"], 4, 4, 0))
        assert r["samples_per_s"] > 0 and r["samples_per_s_per_rank"] == r["samples_per_s"]
        assert 0 <= r["data_wait_pct"] <= 100 and r["peak_mem_gb"] > 0


def test_eval_and_summary_records_match_the_run(recorded):
    run_dir, result = recorded
    records = read_metrics(run_dir)
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [6, 12]
    for r, want in zip(evals, result.evals, strict=True):
        assert {k: r[k] for k in want} == pytest.approx(want)
    (summary,) = [r for r in records if r["kind"] == "summary"]
    assert summary["samples"] == result.samples == 12 * 32 and summary["world_size"] == 1
    assert json.loads((run_dir / "config.json").read_text())["data"]["mini_batch_size"] == 32


def test_tensorboard_events_hold_the_same_numbers(recorded):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = recorded
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    train = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [r["step"] for r in train]
    assert [e.value for e in events] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert [e.step for e in acc.Scalars("eval/auc")] == [6, 12]


def test_profiler_writes_a_chrome_trace_of_the_window(recorded):
    run_dir, _ = recorded
    (trace,) = (run_dir / "profile").glob("rank0*.json")
    events = json.loads(trace.read_text())["traceEvents"]
    steps = {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")}
    assert len(steps) == 2
    # TorchRec's stage scopes and the optimizers' are recorded (dlrm_dist.scopes skips
    # them only while no profiler runs)
    names = {e.get("name", "") for e in events}
    assert any(n.startswith("## EmbeddingBagCollectionAwaitable") for n in names)
    assert any(n.startswith("Optimizer.step#") for n in names)


def test_report_draws_the_right_series_and_summarizes(recorded, tmp_path):
    run_dir, _ = recorded
    drawn = plot(read_metrics(run_dir), tmp_path)
    assert {p.name: s for p, s in drawn.items()} == {
        "loss.png": ["train loss", "eval loss"],
        "auc.png": ["eval auc"],
        "throughput.png": ["train samples_per_s", "train samples_per_s_per_rank"],
        "lr.png": ["train lr"],
    }
    for path in drawn:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = subprocess.run(
        [sys.executable, "-m", "dlrm_dist.report", str(run_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "train: 4 log steps up to step 12" in proc.stdout
    assert "eval: 2 evaluations" in proc.stdout and "run: 384 samples" in proc.stdout
    assert all((run_dir / name).is_file() for name in ("loss.png", "summary.txt"))


def test_report_of_a_missing_run_dir_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dlrm_dist.report", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout.startswith("ERROR:") and not proc.stderr


def test_log_line_carries_rank_rate_lr_data_wait_and_memory(capsys):
    run(parse_args([*ARGV, "--test-freq=-1"]))
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Finished")]
    assert len(lines) == 3
    assert re.search(r"\(\d+/rank, [\d.]+ ms/step, lr 0.2, data [\d.]+ %, peak mem", lines[-1])


@pytest.mark.timeout(300)
def test_two_ranks_write_one_metrics_file_with_global_and_per_rank_rates(tmp_path):
    launch(2, train_many, [[*ARGV, f"--run-dir={tmp_path}"]])
    train = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert len(train) == 4  # rank 0 alone writes
    for r in train:
        assert r["samples_per_s_per_rank"] == pytest.approx(r["samples_per_s"] / 2)
