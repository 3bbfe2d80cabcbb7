"""The trainer end to end: per-iteration parity with the plain-PyTorch oracle, the
reference's debug output, evaluation, and the CLI's exits."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dlrm_dist.arch import (
    dense_parameter_names,
    derive_arch,
    parameter_order,
    sparse_parameter_names,
)
from dlrm_dist.cli import parse_args
from dlrm_dist.train import main, run
from tests.common import ROOT, tiny_job
from tests.oracle import oracle_kwargs, oracle_train

C_SMALL = [  # the seed's config C, scaled down: 15 tables, dim 16
    "--arch-embedding-size=" + "-".join(["100"] * 12 + ["1000"] * 3),
    "--arch-sparse-feature-size=16",
    "--arch-mlp-bot=13-64-16",
    "--mini-batch-size=32",
    "--num-batches=50",
]


def _oracle(argv: list[str]) -> dict:
    return oracle_train(**oracle_kwargs(parse_args(argv)))


def _assert_parity(argv: list[str]) -> None:
    argv = [*argv, "--print-freq=1000", "--progress-bar=false"]
    ours = run(parse_args(argv))
    want = _oracle(argv)
    assert len(ours.losses) == len(want["losses"])
    np.testing.assert_allclose(ours.losses, want["losses"], rtol=1e-5)
    cfg = parse_args(argv)
    names = parameter_order(derive_arch(cfg.model))
    for name, value in zip(names, want["params"]):
        np.testing.assert_allclose(ours.final_weights[name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "extra",
    [
        ["--learning-rate=0.1"],  # config C scaled down, mse
        ["--loss-function=bce", "--round-targets=true", "--learning-rate=0.2"],
        ["--arch-interaction-op=cat", "--arch-mlp-top=32-1", "--learning-rate=0.1"],
        [
            "--arch-interaction-op=dcn",
            "--dcn-num-layers=2",
            "--dcn-low-rank-dim=8",
            "--arch-mlp-top=32-1",
            "--loss-function=bce",
            "--round-targets=true",
            "--learning-rate=0.1",
        ],
    ],
    ids=["c-mse", "c-bce", "c-cat", "c-dcn"],
)
def test_losses_match_the_oracle_over_50_iterations(extra):
    _assert_parity(C_SMALL + extra)


def test_parity_with_lr_schedule_itself_and_two_epochs():
    _assert_parity(
        [
            "--arch-embedding-size=40-50-60",
            "--arch-sparse-feature-size=8",
            "--arch-mlp-bot=6-8",
            "--arch-interaction-itself=true",
            "--loss-function=wbce",
            "--loss-weights=0.5-2.0",
            "--round-targets",
            "--mini-batch-size=16",
            "--data-size=100",  # partial last batch of 4
            "--nepochs=2",
            "--num-indices-per-lookup=4",
            "--num-indices-per-lookup-fixed=true",
            "--learning-rate=0.5",
            "--lr-num-warmup-steps=3",
            "--lr-decay-start-step=5",
            "--lr-num-decay-steps=6",
        ]
    )


@pytest.mark.parametrize("sharding", ["column_wise", "table_column_wise", "data_parallel"])
def test_every_cpu_sharding_type_trains_the_same(sharding):
    base = [*C_SMALL[:-1], "--num-batches=10", "--print-freq=100", "--learning-rate=0.1"]
    ref = run(parse_args([*base, "--sharding-type=table_wise"]))
    got = run(parse_args([*base, f"--sharding-type={sharding}"]))
    np.testing.assert_allclose(got.losses, ref.losses, rtol=1e-5)


SEED_DEBUG_DATA = """data (inputs and targets):
mini-batch: 0
tensor([[4.1702e-01, 7.2032e-01, 1.1437e-04, 3.0233e-01],
        [1.4676e-01, 9.2339e-02, 1.8626e-01, 3.4556e-01]])
tensor([[2, 3],
        [1, 1],
        [2, 1]], dtype=torch.int32)
[tensor([1, 2, 0, 1, 3]), tensor([1, 0]), tensor([0, 1, 1])]
tensor([[0.8946],
        [0.0850]])
mini-batch: 1
tensor([[0.0391, 0.1698, 0.8781, 0.0983],
        [0.4211, 0.9579, 0.5332, 0.6919]])
tensor([[1, 3],
        [2, 1],
        [1, 1]], dtype=torch.int32)
[tensor([2, 0, 2, 3]), tensor([1, 2, 1]), tensor([0, 0])]
tensor([[0.6788],
        [0.2116]])
mini-batch: 2
tensor([[0.2655, 0.4916, 0.0534, 0.5741],
        [0.1467, 0.5893, 0.6998, 0.1023]])
tensor([[2, 1],
        [2, 2],
        [1, 1]], dtype=torch.int32)
[tensor([1, 2, 2]), tensor([1, 2, 0, 2]), tensor([1, 0])]
tensor([[0.9275],
        [0.3478]])
"""


SEED_ARCH = """model arch:
mlp top arch 3 layers, with input to output dimensions:
[8 4 2 1]
# of interactions
8
mlp bot arch 2 layers, with input to output dimensions:
[4 3 2]
# of features (sparse and dense)
4
dense feature size
4
sparse feature size
2
# of embeddings (= # of sparse features) 3, with dimensions 2x:
[4 3 2]
"""


def test_debug_mode_prints_the_seed_document(capsys):
    argv = ["--numpy-rand-seed=1", "--mini-batch-size=2", "--data-size=6", "--debug-mode"]
    assert main(argv) == 0
    ours, _, out = capsys.readouterr().out.partition("\n")  # our one line, then the reference's
    assert ours.startswith("dlrm_dist: ") and " thread(s) per rank (" in ours
    assert out.startswith(SEED_ARCH + SEED_DEBUG_DATA + "initial parameters (weights and bias):")
    assert "updated parameters (weights and bias):" in out
    assert out.count("Finished training it") == 3  # print-freq 1: per-iteration losses

    # the reference draws the printed batches before the model: its initial weights
    # come from the stream after those 3 batches, unlike a normal run
    rs = np.random.RandomState(1)
    from dlrm_dist.data.reference_random import RandomDataSpec, ReferenceRandomData
    from dlrm_dist.initial_weights import reference_init

    data = ReferenceRandomData(RandomDataSpec(4, (4, 3, 2)), rs, 1, 6, 0, 2)
    for j in range(3):
        data.raw(j)
    arch = derive_arch(parse_args([]).model)
    debug_init = reference_init(rs, arch)
    normal_init = reference_init(np.random.RandomState(1), arch)
    first = next(iter(debug_init))
    with np.printoptions(precision=5):
        assert str(debug_init[first]) in out
        assert str(normal_init[first]) not in out


def test_evaluation_of_an_untrained_model_equals_the_training_loss():
    argv = [
        *C_SMALL[:-2],
        "--mini-batch-size=32",
        "--data-size=200",  # 7 batches, the last of 8
        "--learning-rate=0",
        "--loss-function=bce",
        "--round-targets",
        "--test-freq=7",
        "--print-freq=100",
    ]
    result = run(parse_args(argv))
    sizes = [32] * 6 + [8]
    train_mean = np.dot(result.losses, sizes) / sum(sizes)
    (ev,) = result.evals
    assert ev["loss"] == pytest.approx(train_mean, rel=1e-6)
    assert 0.0 <= ev["accuracy"] <= 1.0 and 0.0 < ev["auc"] < 1.0


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dlrm_dist.train", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_cli_end_to_end_run(tmp_path):
    config = tmp_path / "job.toml"
    config.write_text(
        (ROOT / "configs/default.toml")
        .read_text()
        .replace("data_size = 384000", "data_size = 2560")
    )
    run_dir = f"--run-dir={tmp_path / 'run'}"  # not the job's runs/default in the checkout
    proc = _cli("--config", str(config), "--print-freq=10", "--test-freq=20", run_dir)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "Finished training it 10/20 of epoch 0," in proc.stdout
    assert any(line.startswith(" loss ") and ", auc " in line for line in lines)
    assert lines[-1].startswith("Done: 2560 samples in ")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--arch-dense-feature-size=5"],
            "ERROR: arch-dense-feature-size 5 does not match first dim of bottom mlp 4",
        ),
        (
            ["--arch-mlp-bot=4-3-5"],
            "ERROR: arch-sparse-feature-size 2 does not match last dim of bottom mlp 5",
        ),
        (
            ["--activation-function=relu"],
            "ERROR: --activation-function is a reference flag that dlrm_dist does not",
        ),
    ],
)
def test_cli_errors_are_one_line_without_traceback(args, line):
    proc = _cli(*args)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith(line)
    assert len(proc.stderr.strip().splitlines()) == 1


def test_progress_bar_only_on_a_terminal():
    import fcntl
    import os
    import pty
    import struct
    import termios

    args = [sys.executable, "-m", "dlrm_dist.train", "--num-batches=5", "--mini-batch-size=4"]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real width
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, timeout=300)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.returncode == 0
    assert b"5/5" in shown  # tqdm's counter, on the terminal
    assert b"5/5 [" not in proc.stdout and b"it/s" not in proc.stdout  # not in the log
    piped = _cli("--num-batches=5", "--mini-batch-size=4")
    assert "it/s" not in piped.stderr and "it/s" not in piped.stdout


def test_mlperf_dcnv2_config_runs_scaled_down_on_cpu():
    cfg = parse_args(
        [
            "--config",
            str(ROOT / "configs/mlperf_dcnv2.toml"),
            "--arch-embedding-size=" + "-".join(["100"] * 26),
            "--mini-batch-size=32",
            "--num-batches=2",
            "--print-freq=1",
            "--progress-bar=false",
        ]
    )
    m = cfg.model
    assert (m.interaction, m.dcn_num_layers, m.dcn_low_rank_dim) == ("dcn", 3, 512)
    assert m.mlp_bot == [13, 512, 256, 128] and m.mlp_top == [1024, 1024, 512, 256, 1]
    assert len(cfg.data.multi_hot_sizes) == 26 and cfg.optim.optimizer == "adagrad"
    result = run(cfg)
    assert len(result.losses) == 2 and np.isfinite(result.losses).all()
    assert result.final_weights["interaction.dcn.crossnet.W_kernels.2"].shape == (27 * 128, 512)


def test_fp16_tables_train_close_to_fp32():
    argv = [
        "--arch-embedding-size=100-200-300",
        "--arch-sparse-feature-size=8",
        "--arch-mlp-bot=13-16-8",
        "--mini-batch-size=64",
        "--num-batches=20",
        "--data-generation=random-fast",
        "--optimizer=rwsadagrad",
        "--sharding-type=table_wise",
        "--learning-rate=0.1",
        "--print-freq=100",
        "--progress-bar=false",
    ]
    fp32 = run(parse_args(argv))
    fp16 = run(parse_args([*argv, "--embedding-precision=fp16"]))
    name = "sparse_arch.embedding_bag_collection.embedding_bags.t_cat_0.weight"
    assert fp16.final_weights[name].dtype == np.float16
    assert fp32.final_weights[name].dtype == np.float32
    np.testing.assert_allclose(fp16.losses, fp32.losses, rtol=2e-2)
    np.testing.assert_allclose(fp16.final_weights[name], fp32.final_weights[name], atol=2e-3)


def test_bf16_dense_layers_train_close_to_fp32_through_the_pipeline():
    argv = [
        "--arch-embedding-size=100-200-300",
        "--arch-sparse-feature-size=8",
        "--arch-mlp-bot=13-16-8",
        "--arch-mlp-top=16-1",
        "--loss-function=bce",
        "--round-targets=true",
        "--mini-batch-size=64",
        "--num-batches=20",
        "--data-generation=random-fast",
        "--sharding-type=table_wise",
        "--learning-rate=0.1",
        "--print-freq=100",
        "--progress-bar=false",
    ]
    fp32 = run(parse_args(argv))
    bf16 = run(parse_args([*argv, "--dense-precision=bf16"]))
    assert bf16.pipelined  # the pipeline's fx trace of the forward takes the autocast
    # bf16 keeps 8 bits of mantissa (~4e-3 relative per product): close, not equal
    assert bf16.losses != fp32.losses
    np.testing.assert_allclose(bf16.losses, fp32.losses, rtol=3e-2)
    name = "bot_l.0.weight"
    assert bf16.final_weights[name].dtype == np.float32  # the weights stay fp32
    np.testing.assert_allclose(bf16.final_weights[name], fp32.final_weights[name], atol=5e-3)


def test_mlperf_thresholds_stop_training_and_eval_reports_logloss_and_ne(capsys):
    argv = [
        "--arch-embedding-size=100-200-300",
        "--arch-sparse-feature-size=4",
        "--arch-mlp-bot=13-8-4",
        "--mini-batch-size=64",
        "--num-batches=12",
        "--data-generation=random-fast",
        "--loss-function=bce",
        "--round-targets=true",
        "--test-freq=4",
        "--print-freq=100",
        "--progress-bar=false",
    ]
    full = run(parse_args(argv))
    assert len(full.losses) == 12 and len(full.evals) == 3
    e = full.evals[0]
    assert e["logloss"] == pytest.approx(e["loss"], rel=1e-5)  # bce: the loss is the logloss
    assert 0.9 < e["ne"] < 1.2  # random labels: about the entropy of the click rate
    stopped = run(parse_args([*argv, "--mlperf-acc-threshold=1"]))  # 1 %: met at once
    assert len(stopped.losses) == 4 and len(stopped.evals) == 1
    assert "MLPerf testing accuracy threshold reached, stop training" in capsys.readouterr().out
    auc = run(parse_args([*argv, "--mlperf-auc-threshold=0.999"]))  # never met
    assert len(auc.losses) == 12


def test_sharded_weight_init_keeps_each_shards_own_draw_of_the_same_law():
    # lr 0: the final weights are the initial ones
    argv = [*C_SMALL, "--mini-batch-size=32", "--num-batches=1", "--learning-rate=0"]
    argv += ["--sharding-type=column_wise", "--print-freq=100"]
    reference = run(parse_args(argv)).final_weights
    sharded = run(parse_args([*argv, "--weight-init=sharded"])).final_weights
    arch = derive_arch(parse_args(argv).model)
    # the MLPs: the reference's stream with no table drawn first
    from dlrm_dist.initial_weights import reference_init

    dense = reference_init(np.random.RandomState(123), arch, tables=False)
    assert list(dense) == dense_parameter_names(arch)
    for name, want in dense.items():
        np.testing.assert_array_equal(sharded[name], want)
    for name in sparse_parameter_names(arch):
        rows = sharded[name].shape[0]
        bound = np.sqrt(1 / rows)  # uniform(-b, b): |w| <= b, variance b^2 / 3
        assert np.abs(sharded[name]).max() <= bound * (1 + 1e-6)
        assert np.var(sharded[name]) == pytest.approx(bound**2 / 3, rel=0.35)
        assert not np.array_equal(sharded[name], reference[name])


@pytest.mark.parametrize("generation, checks", [("random", 0), ("random-fast", 12)])
def test_the_batch_check_is_skipped_only_for_data_in_range_by_construction(
    generation, checks, monkeypatch
):
    """The reference's uniform random data is in range by construction (its in_range,
    tested in test_reference_data): no per-batch check; other data is checked per step."""
    from dlrm_dist.data import batch_check

    calls: list[int] = []
    call = batch_check.BatchCheck.__call__

    def count(self, batch):
        calls.append(self.step)
        return call(self, batch)

    monkeypatch.setattr(batch_check.BatchCheck, "__call__", count)
    argv = tiny_job(data_generation=generation, print_freq=1000)
    assert len(run(parse_args(argv)).losses) == 12
    assert len(calls) == checks


def test_drawing_ahead_in_a_worker_trains_the_same_numbers(tmp_path, monkeypatch):
    """The reference's random data drawn ahead by a worker process (dlrm_dist.data.draw_ahead)
    against drawn in the rank: the same losses, evaluations (their test batches come from
    the same stream, between the training batches) and weights, bit for bit; and a run
    resumed from a checkpoint written while the worker ran continues the same."""
    from dlrm_dist import threads
    from dlrm_dist.data.draw_ahead import DrawAhead

    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})  # a core to spare
    served: list[int] = []
    close = DrawAhead.close

    def spy(self) -> None:
        if self.proc is not None:
            served.append(self.served)
        close(self)

    monkeypatch.setattr(DrawAhead, "close", spy)
    argv = [*C_SMALL, "--learning-rate=0.1", "--test-freq=7", "--threads=1", "--nepochs=2"]
    argv += ["--print-freq=1000", "--progress-bar=false"]
    here = run(parse_args([*argv, "--draw-ahead=false"]))
    assert served == []
    ckpt = [f"--checkpoint-dir={tmp_path}", "--checkpoint-every=30"]
    ahead = run(parse_args([*argv, *ckpt]))
    # 100 steps over 2 epochs of 50, evaluations after batches 7, 14, .., 49 and 50 of
    # each: each epoch's first batch and the 7 batches after its mid-epoch evaluations
    # are drawn in the rank (the worker's draw from the state before the evaluation is
    # thrown away), the other 84 by the worker
    assert served == [100 - 2 * (1 + 7)]
    assert ahead.losses == here.losses
    assert ahead.evals == here.evals and len(here.evals) == 16
    for name, value in here.final_weights.items():
        assert np.array_equal(ahead.final_weights[name], value), name
    resumed = run(parse_args([*argv, f"--resume={tmp_path}/step-30"]))
    assert resumed.losses == here.losses[30:]
    assert resumed.evals == here.evals[-len(resumed.evals) :]
