"""CUDA paths, run where a GPU is present (marked `gpu`, skipped elsewhere), on one GPU at
world size 1 in this process (nccl puts one rank on a GPU): every sharding type trains like
the CPU; the fused optimizers match plain PyTorch; the pipeline on CUDA streams trains like
the plain loop; UVM and UVM-cached tables like HBM ones; fp16 tables close to fp32; a
checkpoint moves between GPU and CPU; a GPU-trained checkpoint is evaluated, quantized and
exported; an id outside its table is one error line that saves nothing.

Each run's logged plan says where it ran (`1 cuda rank(s)`) and which sharding type and
kernel each table got, so no comparison passes because a run fell back to the CPU or to
another kernel."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_dist import inference
from dlrm_dist.arch import derive_arch
from dlrm_dist.checkpoint import list_checkpoints
from dlrm_dist.cli import parse_args
from dlrm_dist.config import choices
from dlrm_dist.data.sources import make_data
from dlrm_dist.evaluation import evaluate
from dlrm_dist.train import RunResult, main, run
from tests.common import TINY_JOB, file_hashes
from tests.dist.test_failures import CASES, TRAIN_8
from tests.dist.test_inference import BASE as INFERENCE_JOB
from tests.dist.test_inference import BOUNDS, _other_batches
from tests.dist.test_optimizers import _compare, _fused
from tests.fault_hooks import arm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

ON_GPU = ["--use-gpu"]  # cuda + nccl
DEVICE = "cuda"  # what the plan of an ON_GPU run says it ran on
BASE = [
    "--arch-embedding-size=200-300-400-500",
    "--arch-sparse-feature-size=8",
    "--arch-mlp-bot=5-16-8",
    "--arch-mlp-top=16-1",
    "--loss-function=bce",
    "--round-targets=true",
    "--mini-batch-size=64",
    "--num-batches=20",
    "--data-generation=random-fast",
    "--optimizer=adagrad",
    "--learning-rate=0.05",
    "--print-freq=1000",
    "--progress-bar=false",
]
TABLE = "sparse_arch.embedding_bag_collection.embedding_bags.t_cat_0.weight"
# CUDA against the CPU: the same fp32 math summed in another order (cuBLAS, FBGEMM's CUDA
# kernels), ~1e-7 relative per op, grown over 12-20 steps of Adagrad
CPU_LOSSES = {"rtol": 1e-4, "atol": 1e-6}
CPU_WEIGHTS = {"rtol": 1e-3, "atol": 1e-5}
# the same kernels in the same order on the same GPU (the pipeline only moves the input
# copies and all-to-alls onto other streams; UVM only moves where the rows live): equal
# but for reassociation, none expected (no long row segments that FBGEMM splits over CTAs)
SAME = {"rtol": 1e-6, "atol": 1e-7}
PLAN_ROW = re.compile(r"^t_cat_\d+ +\d+ x \d+ +(\w+) +(\w+) ", re.M)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _logged(argv: list[str]) -> Iterator[_Lines]:
    """The trainer's log (logger dlrm_dist, INFO) while the block runs argv; afterwards,
    checks that its plan ran on the device asked for (DEVICE with ON_GPU, else cpu)."""
    logger, handler = logging.getLogger("dlrm_dist"), _Lines()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    device = DEVICE if "--use-gpu" in argv else "cpu"
    text = "\n".join(handler.lines)
    assert re.search(rf"^Sharding plan: \d+ tables on 1 {device} rank\(s\)", text, re.M), text


def _train(argv: list[str]) -> tuple[RunResult, str]:
    """run(argv) (on the device asked for, see _logged), and what it logged."""
    with _logged(argv) as log:
        result = run(parse_args(argv))
    return result, "\n".join(log.lines)


def _planned(log: str) -> set[tuple[str, str]]:
    """The (sharding type, kernel) pairs of the tables of the plan in log."""
    return set(PLAN_ROW.findall(log))


def _assert_close(got: RunResult, want: RunResult, losses: dict, weights: dict) -> None:
    assert len(got.losses) == len(want.losses) > 0
    np.testing.assert_allclose(got.losses, want.losses, **losses)
    assert got.final_weights.keys() == want.final_weights.keys()
    for name, value in want.final_weights.items():
        np.testing.assert_allclose(got.final_weights[name], value, **weights, err_msg=name)


# --- 1. every sharding type ------------------------------------------------------------
SHARDINGS = [t for t in choices("sharding", "sharding_type") if t != "auto"]  # all six


@pytest.fixture(scope="module")
def cpu_reference() -> RunResult:
    return _train([*BASE, "--sharding-type=table_wise"])[0]


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_cuda_sharding_trains_like_the_cpu(cpu_reference, sharding):
    gpu, log = _train([*BASE, *ON_GPU, f"--sharding-type={sharding}"])
    assert {s for s, _ in _planned(log)} == {sharding}
    assert gpu.pipelined  # random-fast goes through TrainPipelineSparseDist
    _assert_close(gpu, cpu_reference, CPU_LOSSES, CPU_WEIGHTS)


# --- 2. the fused optimizers against plain PyTorch -------------------------------------
# adam: FBGEMM's fused Adam (CUDA only) against lazy Adam (SparseAdam on the tables)
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rwsadagrad", "adam"])
def test_fused_optimizers_on_cuda_match_the_reference_update(optimizer):
    # test_optimizers' comparison with the oracle, tolerances and all (the oracle's
    # reference data: the plain loop)
    argv = [*_fused(optimizer), *ON_GPU]
    with _logged(argv):
        _compare(argv)


# --- 3. the pipeline on CUDA streams ---------------------------------------------------
def test_the_cuda_pipeline_trains_like_the_plain_loop():
    argv = [*BASE, *ON_GPU, "--sharding-type=table_wise", "--test-freq=10"]
    piped, _ = _train(argv)
    plain, _ = _train([*argv, "--pipeline=false"])
    assert piped.pipelined and not plain.pipelined
    _assert_close(piped, plain, SAME, SAME)
    assert len(piped.evals) == 2  # evaluated between steps: the pipeline detached, resumed
    for got, want in zip(piped.evals, plain.evals, strict=True):
        assert got == pytest.approx(want, rel=1e-6)


# --- 4. tables in UVM and UVM-cached ---------------------------------------------------
@pytest.fixture(scope="module")
def hbm_tables() -> RunResult:
    result, log = _train([*BASE, *ON_GPU, "--sharding-type=table_wise", "--compute-kernel=fused"])
    assert _planned(log) == {("table_wise", "fused")}
    return result


@pytest.mark.parametrize(
    ("kernel", "extra"),
    [
        ("fused_uvm", []),
        # 10 %: 20-50 rows of each table in HBM, fewer than a batch touches: rows are
        # evicted and written back every step
        ("fused_uvm_caching", ["--embedding-cache-ratio=0.1"]),
    ],
)
def test_uvm_tables_train_like_hbm_tables(hbm_tables, kernel, extra):
    argv = [*BASE, *ON_GPU, "--sharding-type=table_wise", f"--compute-kernel={kernel}", *extra]
    got, log = _train(argv)
    assert _planned(log) == {("table_wise", kernel)}
    _assert_close(got, hbm_tables, SAME, SAME)


# --- 5. fp16 tables ----------------------------------------------------------------------
def test_fp16_tables_on_cuda_train_close_to_fp32():
    # tests/dist/test_train.py::test_fp16_tables_train_close_to_fp32 on CUDA, its tolerances:
    # fp16 rounds each update to an ulp (~6e-5 at these weights; FBGEMM's default on CUDA
    # is stochastic rounding, as large), 20 steps stay well inside 2e-3
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
        *ON_GPU,
    ]
    fp32, _ = _train(argv)
    fp16, _ = _train([*argv, "--embedding-precision=fp16"])
    assert fp16.final_weights[TABLE].dtype == np.float16
    assert fp32.final_weights[TABLE].dtype == np.float32
    np.testing.assert_allclose(fp16.losses, fp32.losses, rtol=2e-2)
    np.testing.assert_allclose(fp16.final_weights[TABLE], fp32.final_weights[TABLE], atol=2e-3)


# --- 6. checkpoints between GPU and CPU --------------------------------------------------
FAST = [*TINY_JOB, "--data-generation=random-fast", "--sharding-type=table_wise"]  # 12 steps


@pytest.mark.parametrize(
    ("saved_on", "resumed_on"),
    [(ON_GPU, []), ([], ON_GPU), (ON_GPU, ON_GPU)],
    ids=["gpu-to-cpu", "cpu-to-gpu", "gpu-to-gpu"],
)
def test_a_checkpoint_resumes_on_the_other_device(tmp_path, saved_on, resumed_on):
    """Saved at step 4 of an uninterrupted run, resumed for steps 5-12: its losses and
    final weights are the uninterrupted run's, within CPU-vs-CUDA tolerance (SAME when
    both runs are on one device)."""
    ckpt = [f"--checkpoint-dir={tmp_path}", "--checkpoint-every=4"]
    straight, _ = _train([*FAST, *saved_on, *ckpt])
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 8, 12]
    resumed, log = _train([*FAST, *resumed_on, f"--resume={tmp_path / 'step-4'}"])
    assert f"checkpoint: resumed from {tmp_path / 'step-4'}: step 4" in log
    if saved_on != resumed_on:
        was, now = (str(bool(x)).lower() for x in (saved_on, resumed_on))
        assert f"--use-gpu={was} (this run: {now})" in log  # a changed setting
    moved = saved_on != resumed_on
    losses, weights = (CPU_LOSSES, CPU_WEIGHTS) if moved else (SAME, {"rtol": 0, "atol": 1e-6})
    assert len(straight.losses) == 12
    np.testing.assert_allclose(resumed.losses, straight.losses[4:], **losses)
    assert resumed.final_weights.keys() == straight.final_weights.keys()
    for name, value in straight.final_weights.items():
        np.testing.assert_allclose(resumed.final_weights[name], value, **weights, err_msg=name)


# --- 7. a GPU-trained checkpoint: --inference-only, quantization, export ----------------
@pytest.fixture(scope="module")
def gpu_trained(tmp_path_factory):
    """tests/dist/test_inference.py's job trained on CUDA with its checkpoint; the config,
    arch, final weights and test data (512 samples)."""
    d = tmp_path_factory.mktemp("gpu_ckpt")
    argv = [*INFERENCE_JOB, *ON_GPU, f"--checkpoint-dir={d}"]
    result, _ = _train(argv)
    cfg = parse_args(argv)
    arch = derive_arch(cfg.model, cfg.data.dense_features)
    test_data = make_data(cfg, arch, np.random.RandomState(0), eval_set=True)
    (_, path), *_ = list_checkpoints(d)
    return argv, d, path, result, cfg, arch, test_data


def _cpu_metrics(cfg, arch, test_data, weights, mlp: int = 32, emb: int = 32) -> dict:
    """Independently of the inference run: an unsharded CPU copy of the weights (quantized
    as asked) evaluated on the test data."""
    model = inference.quantize(inference.inference_model(arch, cfg.model, weights), mlp, emb)
    cpu = torch.device("cpu")
    return evaluate(inference.Scored(model, cfg.model), test_data, cpu, len(test_data))


def test_inference_only_evaluates_the_gpu_checkpoint_and_writes_nothing(gpu_trained):
    argv, d, path, result, cfg, arch, test_data = gpu_trained
    before = file_hashes(d)
    inf = [*argv, "--inference-only", f"--resume={path}", "--quantize-mlp-with-bit=8"]
    got, _ = _train([*inf, "--quantize-emb-with-bit=8"])
    assert got.losses == [] and len(got.evals) == 2  # float, then quantized
    flt, quant = got.evals
    # the checkpoint holds the GPU run's final weights: the inference run's CPU copy
    # evaluates (on the CPU, as it) to the same metrics
    assert flt == pytest.approx(_cpu_metrics(cfg, arch, test_data, result.final_weights), abs=1e-6)
    want = _cpu_metrics(cfg, arch, test_data, result.final_weights, 8, 8)
    assert quant == pytest.approx(want, abs=1e-6)
    # the training run's own last evaluation ran on CUDA: CPU-vs-CUDA sums move each
    # prediction ~1e-7, which can round one of 512 samples the other way at 0.5 (accuracy
    # 1/512) and swap a near-tied pair (AUC ~1e-5)
    gpu_eval = result.evals[-1]
    assert flt.keys() == gpu_eval.keys() >= {"loss", "accuracy", "auc"}
    for key, tol in {"loss": 1e-5, "logloss": 1e-5, "ne": 1e-5, "accuracy": 2 / 512}.items():
        assert flt[key] == pytest.approx(gpu_eval[key], abs=tol), key
    assert flt["auc"] == pytest.approx(gpu_eval["auc"], abs=1e-4)
    for key, bound in zip(("loss", "accuracy", "auc"), BOUNDS[(8, 8)]):
        assert abs(quant[key] - flt[key]) <= bound, key
    assert file_hashes(d) == before


def test_the_command_line_quantizes_and_exports_the_gpu_checkpoint(gpu_trained, tmp_path, capsys):
    argv, d, path, result, cfg, arch, test_data = gpu_trained
    before = file_hashes(d)
    out = tmp_path / "dlrm.pt2"
    inf = [*argv, "--inference-only", f"--resume={path}", "--quantize-emb-with-bit=4"]
    assert main([*inf, f"--export={out}"]) == 0
    err = capsys.readouterr().err
    assert f"Sharding plan: 4 tables on 1 {DEVICE} rank(s)" in err
    assert "inference: float: loss" in err and "inference: emb int4: loss" in err
    assert "change: loss" in err and out.is_file()
    assert file_hashes(d) == before
    # the program holds the GPU run's weights: it gives the outputs of an eager int4 copy
    # of them, on the traced batch and on batches of other sizes
    model = inference.quantize(
        inference.inference_model(arch, cfg.model, result.final_weights), 32, 4
    )
    program = inference.load_export(str(out))
    batch = next(iter(test_data))
    kjt = batch.sparse_features
    sparse = KeyedJaggedTensor(kjt.keys(), kjt.values(), lengths=kjt.lengths())
    cases = [(batch.dense_features, sparse)]
    cases += _other_batches(test_data, kjt.keys(), arch.m_den)
    with torch.no_grad():
        for dense, sparse in cases:
            got = program.module()(dense, sparse)
            torch.testing.assert_close(got, model(dense, sparse), rtol=0, atol=1e-6)


# --- 8. an id outside its table ----------------------------------------------------------
def _one_error_line(capsys, says: str) -> None:
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and errors[0].startswith("ERROR: ") and says in errors[0], err
    assert "Traceback" not in out + err
    assert f"Sharding plan: 4 tables on 1 {DEVICE} rank(s)" in err


def test_an_id_outside_its_table_on_cuda_is_one_line_and_saves_nothing(
    tmp_path, monkeypatch, capsys
):
    """tests/dist/test_failures.py's bad id on CUDA: the first id of step 8's batch is one past
    its table; checkpoints every 4 steps. A fresh run keeps step-4 and saves nothing after
    it; resumed from step-4, it changes no file. (Step 8, not test_failures' 6: the
    pipeline pulls, and so checks, a batch two steps ahead: batch 6 fails during step 4,
    before step 4's checkpoint.)"""
    says = CASES["bad-index"][1].replace("step 6", "step 8")
    assert "in the batch of step 8: ids must be in [0, 20)" in says
    arm("badid", 0, 8, monkeypatch.setattr)
    argv = [*TRAIN_8, *ON_GPU, f"--checkpoint-dir={tmp_path}"]
    capsys.readouterr()
    assert main(argv) == 2
    _one_error_line(capsys, says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-4"]
    before = file_hashes(tmp_path)
    assert main([*argv, "--resume=auto"]) == 2
    _one_error_line(capsys, says)
    assert file_hashes(tmp_path) == before


# --- the data drawn on the GPU, TF32 ---------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        [],
        ["--rand-data-dist=zipf"],
        ["--multi-hot-sizes=3-1-7-2"],
    ],
    ids=["uniform", "zipf", "multi-hot"],
)
def test_data_drawn_on_the_gpu_trains_exactly_like_data_drawn_on_the_host(data):
    # the same numbers by construction (tests/unit/test_random_fast_torch.py): the same
    # kernels on the same inputs, so the same losses and weights
    argv = [*BASE, *ON_GPU, "--sharding-type=table_wise", *data]
    device, _ = _train(argv)
    host, _ = _train([*argv, "--random-fast-draw-on=host"])
    _assert_close(device, host, SAME, SAME)


def test_tf32_trains_close_to_fp32():
    # TF32 keeps 10 mantissa bits per product (~1e-3 relative), sums in fp32
    argv = [*BASE, *ON_GPU, "--sharding-type=table_wise"]
    tf32, _ = _train([*argv, "--tf32"])
    assert torch.backends.cuda.matmul.allow_tf32
    fp32, _ = _train(argv)
    assert not torch.backends.cuda.matmul.allow_tf32  # a run without --tf32 resets it
    np.testing.assert_allclose(tf32.losses, fp32.losses, rtol=2e-2, atol=1e-3)


def test_bf16_dense_layers_on_cuda_train_close_to_fp32():
    # bf16 keeps 8 mantissa bits (~4e-3 relative per product); weights and loss stay fp32
    argv = [*BASE, *ON_GPU, "--sharding-type=table_wise"]
    fp32, _ = _train(argv)
    bf16, _ = _train([*argv, "--dense-precision=bf16"])
    assert bf16.losses != fp32.losses
    np.testing.assert_allclose(bf16.losses, fp32.losses, rtol=3e-2)
