"""--inference-only, quantization and export, on one process (CPU, no process group).

A run trains and checkpoints; the inference run evaluates that checkpoint to the
metrics the training run's own last evaluation logged, and writes nothing. Quantized
copies of the trained model stay within the bounds the README states of the float
copy on the same test data; the exported program gives the eager model's outputs."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_dist import inference
from dlrm_dist.arch import derive_arch
from dlrm_dist.checkpoint import list_checkpoints
from dlrm_dist.cli import parse_args
from dlrm_dist.data.sources import make_data
from dlrm_dist.errors import ConfigError
from dlrm_dist.evaluation import evaluate
from dlrm_dist.train import main, run
from tests.common import file_hashes
from tests.multiprocess import launch, train_entry

BASE = [
    "--arch-embedding-size=200-300-400-500",
    "--arch-sparse-feature-size=8",
    "--arch-mlp-bot=5-16-8",
    "--arch-mlp-top=16-1",
    "--loss-function=bce",
    "--round-targets=true",
    "--mini-batch-size=64",
    "--num-batches=8",
    "--learning-rate=0.1",
    "--optimizer=adagrad",
    "--progress-bar=false",
    "--data-generation=random-fast",
    "--sharding-type=table_wise",
    "--test-freq=8",
]
# |quantized - float| on the same 512 test samples (README, "Inference")
BOUNDS = {  # (mlp bit, emb bit): (loss, accuracy, auc); measured: about 1/10 of these
    (8, 32): (2e-3, 0.02, 0.01),
    (16, 32): (2e-4, 0.005, 1e-3),
    (32, 8): (2e-4, 0.005, 1e-3),
    (32, 4): (3e-3, 0.02, 0.01),
    (8, 8): (2e-3, 0.02, 0.01),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained run with its checkpoint; the config, arch, weights and test data."""
    d = tmp_path_factory.mktemp("ckpt")
    argv = [*BASE, f"--checkpoint-dir={d}"]
    result = run(parse_args(argv))
    cfg = parse_args(argv)
    arch = derive_arch(cfg.model, cfg.data.dense_features)
    test_data = make_data(cfg, arch, np.random.RandomState(0), eval_set=True)
    return argv, d, result, cfg, arch, test_data


@pytest.mark.timeout(120)
def test_inference_only_evaluates_the_checkpoint_and_writes_nothing(trained):
    argv, d, result, *_ = trained
    (step, path), *_ = list_checkpoints(d)
    before = file_hashes(d)
    got = run(parse_args([*argv, "--inference-only", f"--load-model={path}"]))
    assert got.losses == [] and len(got.evals) == 1
    want = result.evals[-1]  # the training run's evaluation after its last step
    assert got.evals[0].keys() == want.keys() >= {"loss", "accuracy", "auc"}
    for key in want:
        assert got.evals[0][key] == pytest.approx(want[key], abs=1e-6), key
    assert file_hashes(d) == before


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("mlp", "emb"), list(BOUNDS))
def test_quantized_metrics_stay_within_the_stated_bounds(trained, mlp, emb):
    *_, result, cfg, arch, test_data = trained
    model = inference.inference_model(arch, cfg.model, result.final_weights)
    cpu = torch.device("cpu")
    ref = evaluate(inference.Scored(model, cfg.model), test_data, cpu, len(test_data))
    assert ref == pytest.approx(result.evals[-1], abs=1e-6)  # the copy is the trained model
    q = inference.quantize(model, mlp, emb)
    got = evaluate(inference.Scored(q, cfg.model), test_data, cpu, len(test_data))
    changes = {k: abs(got[k] - ref[k]) for k in ("loss", "accuracy", "auc")}
    print(f"mlp {mlp} emb {emb}: {changes}")  # the measured change (pytest -s)
    for key, bound in zip(("loss", "accuracy", "auc"), BOUNDS[(mlp, emb)]):
        assert changes[key] <= bound, (key, changes)
    kinds = {type(m).__module__ for m in q.modules()}
    assert ("torch.ao.nn.quantized.dynamic.modules.linear" in kinds) is (mlp != 32)
    assert ("torchrec.quant.embedding_modules" in kinds) is (emb != 32)


def _other_batches(test_data, keys: list[str], m_den: int) -> list[tuple[torch.Tensor, Any]]:
    """(dense, KJT) of other shapes than the traced batch: the test data's last
    batch, one sample, and three samples with empty and long bags."""
    last = list(test_data)[-1]
    kjt = last.sparse_features
    g = torch.Generator().manual_seed(3)
    out = [
        (last.dense_features, KeyedJaggedTensor(keys, kjt.values(), lengths=kjt.lengths())),
        (
            torch.rand(1, m_den, generator=g),
            KeyedJaggedTensor(
                keys, torch.arange(len(keys)), lengths=torch.ones(len(keys), dtype=torch.long)
            ),
        ),
    ]
    lengths = torch.tensor([0, 7, 1] * len(keys))  # every key: an empty bag, a long one
    out.append(
        (
            torch.rand(3, m_den, generator=g),
            KeyedJaggedTensor(
                keys, torch.randint(0, 200, (int(lengths.sum()),), generator=g), lengths=lengths
            ),
        )
    )
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("emb", [32, 8, 4])
def test_the_exported_program_gives_the_eager_outputs(trained, tmp_path, emb):
    """On the traced batch and on batches of other sizes (B and the number of ids are
    symbolic in the program)."""
    *_, result, cfg, arch, test_data = trained
    model = inference.quantize(
        inference.inference_model(arch, cfg.model, result.final_weights), 32, emb
    )
    batch = next(iter(test_data))
    program = inference.export(model, batch)
    inference.save_export(program, str(tmp_path / "dlrm.pt2"))
    loaded = inference.load_export(str(tmp_path / "dlrm.pt2"))
    kjt = batch.sparse_features
    keys = kjt.keys()
    cases = [(batch.dense_features, KeyedJaggedTensor(keys, kjt.values(), lengths=kjt.lengths()))]
    cases += _other_batches(test_data, keys, arch.m_den)
    assert {1, 3} < {d.shape[0] for d, _ in cases}
    with torch.no_grad():
        for dense, sparse in cases:
            want = model(dense, sparse)
            for prog in (program, loaded):
                got = prog.module()(dense, sparse)
                assert got.shape == (dense.shape[0],)
                torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_an_mlp_quantized_model_does_not_export_and_says_why(trained):
    *_, result, cfg, arch, test_data = trained
    model = inference.quantize(inference.inference_model(arch, cfg.model, result.final_weights), 8)
    with pytest.raises(ConfigError, match="without --quantize-mlp-with-bit"):
        inference.export(model, next(iter(test_data)))


def _onnx_inputs(dense: torch.Tensor, sparse: Any) -> dict[str, np.ndarray]:
    """The ONNX model's inputs (save_onnx's names) for (dense, KJT)."""
    return {
        "dense": dense.numpy(),
        "sparse__values": sparse.values().numpy(),
        "sparse__lengths": sparse.lengths().numpy(),
    }


@pytest.mark.timeout(120)
def test_the_onnx_model_gives_the_eager_outputs(trained, tmp_path):
    """Where onnx, onnxscript and onnxruntime are installed (not in the project's venv)."""
    for name in ("onnx", "onnxscript"):
        pytest.importorskip(name)
    ort = pytest.importorskip("onnxruntime")
    *_, result, cfg, arch, test_data = trained
    model = inference.inference_model(arch, cfg.model, result.final_weights)
    batch = next(iter(test_data))
    inference.save_onnx(model, batch, str(tmp_path / "dlrm.onnx"))
    session = ort.InferenceSession(str(tmp_path / "dlrm.onnx"))
    kjt = batch.sparse_features
    inputs = _onnx_inputs(batch.dense_features, kjt)
    (got,) = session.run(None, inputs)
    with torch.no_grad():
        want = model(batch.dense_features, kjt).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    for dense, sparse in _other_batches(test_data, kjt.keys(), arch.m_den):
        inputs = _onnx_inputs(dense, sparse)
        (got,) = session.run(None, inputs)
        with torch.no_grad():
            want = model(dense, sparse).numpy()
        assert got.shape == (dense.shape[0],)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    quantized = inference.quantize(model, 32, 8)
    with pytest.raises(ConfigError, match="have no ONNX form") as err:
        inference.save_onnx(quantized, batch, str(tmp_path / "q.onnx"))
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)


def test_save_onnx_without_the_onnx_packages_is_one_line(trained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    *_, result, cfg, arch, test_data = trained
    model = inference.inference_model(arch, cfg.model, result.final_weights)
    with pytest.raises(ConfigError, match="pip install onnx onnxscript") as err:
        inference.save_onnx(model, next(iter(test_data)), str(tmp_path / "m.onnx"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--quantize-mlp-with-bit=8"], "--quantize-mlp-with-bit: only with --inference-only"),
        (["--inference-only", "--quantize-mlp-with-bit=4"], "choose one of 8 | 16 | 32"),
        (["--inference-only", "--quantize-emb-with-bit=16"], "choose one of 4 | 8 | 32"),
        (
            ["--inference-only", "--quantize-emb-with-bit=8", "--weighted-pooling=fixed"],
            "quantization with weighted pooling is not supported",
        ),
        (
            ["--inference-only", "--quantize-emb-with-bit=4", "--qr-flag"],
            "quantization with quotient remainder is not supported",
        ),
        (
            ["--inference-only", "--quantize-emb-with-bit=4", "--md-flag"],
            "quantization with mixed dimensions is not supported",
        ),
    ],
)
def test_unsupported_combinations_are_one_line_errors(extra, message, capsys):
    with pytest.raises(ConfigError, match=message):
        parse_args([*BASE, *extra])
    assert main([*BASE, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR:") and message in err and "\n" not in err


@pytest.mark.timeout(120)
def test_the_command_line_quantizes_evaluates_and_exports(trained, tmp_path, capsys):
    argv, d, *_ = trained
    (_, path), *_ = list_checkpoints(d)
    before = file_hashes(d)
    inf = [*argv, "--inference-only", f"--resume={path}", "--quantize-emb-with-bit=4"]
    assert main([*inf, f"--export={tmp_path / 'dlrm.pt2'}"]) == 0
    err = capsys.readouterr().err
    assert "inference: float: loss" in err and "inference: emb int4: loss" in err
    assert "change: loss" in err and (tmp_path / "dlrm.pt2").is_file()
    assert main([*inf, "--quantize-mlp-with-bit=8", f"--export={tmp_path / 'x.pt2'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ERROR: torch.export cannot trace torch.ao's dynamic-quantized")
    assert file_hashes(d) == before and not (tmp_path / "x.pt2").exists()


@pytest.mark.timeout(180)
def test_two_ranks_evaluate_the_checkpoint_to_the_one_rank_metrics(trained):
    """Each rank evaluates its slice with a full copy (gathered on rank 0, broadcast)."""
    argv, d, *_ = trained
    (_, path), *_ = list_checkpoints(d)
    inf = [*argv, "--inference-only", f"--resume={path}", "--quantize-emb-with-bit=8"]
    one = run(parse_args(inf)).evals
    two = launch(2, train_entry, inf)
    for rank in (0, 1):
        assert len(two[rank]["evals"]) == 2 and two[rank]["losses"] == []
        for want, got in zip(one, two[rank]["evals"]):
            for key in ("loss", "accuracy", "auc"):
                assert got[key] == pytest.approx(want[key], abs=1e-6), (rank, key)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_tables_hold_rows_rounded_to_their_own_min_max_grid(trained, bits):
    """Independent of torchrec: FBGEMM's row layout is an fp16 scale s and bias b, then
    the row's D values as bits-wide q = round((w - min) / s), s = (max - min) /
    (2^bits - 1), b = min (4-bit: two per byte, low nibble first). The stored q agree
    with ours (ties may round either way), and each bag is the sum of its q s + b."""
    *_, result, cfg, arch, test_data = trained
    model = inference.inference_model(arch, cfg.model, result.final_weights)
    q = inference.quantize(model, 32, bits)
    kjt = next(iter(test_data)).sparse_features
    got = q.sparse_arch.embedding_bag_collection(kjt).to_dict()
    stored = q.sparse_arch.embedding_bag_collection.state_dict()
    prefix = "sparse_arch.embedding_bag_collection.embedding_bags"
    dim = arch.m_spa
    for key, jt in kjt.to_dict().items():
        w = result.final_weights[f"{prefix}.t_{key}.weight"].astype(np.float64)
        raw = stored[f"embedding_bags.t_{key}.weight"]
        raw = np.asarray(getattr(raw, "elem", raw).numpy(), dtype=np.uint8)
        sb = np.frombuffer(raw[:, :4].tobytes(), dtype=np.float16).reshape(-1, 2)
        scale, bias = sb[:, :1].astype(np.float64), sb[:, 1:].astype(np.float64)
        data = raw[:, 4 : 4 + dim * bits // 8]
        if bits == 4:
            data = np.stack([data & 15, data >> 4], axis=2).reshape(len(w), dim)
        lo, hi = w.min(axis=1, keepdims=True), w.max(axis=1, keepdims=True)
        np.testing.assert_allclose(scale, (hi - lo) / (2**bits - 1), rtol=2e-3, atol=1e-7)
        np.testing.assert_allclose(bias, lo, rtol=2e-3, atol=1e-7)
        # rounded with the fp16 scale and bias (FBGEMM's ...NBitRowwiseQuantizedSBHalf)
        ours = np.clip(np.round((w - bias) / np.where(scale > 0, scale, 1)), 0, 2**bits - 1)
        diff = np.abs(data.astype(np.float64) - ours)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999
        deq = data * scale + bias
        ids, lengths = jt.values().numpy(), jt.lengths().numpy()
        want = np.stack([b.sum(axis=0) for b in np.split(deq[ids], np.cumsum(lengths)[:-1])])
        atol = lengths.max() * 2.0**-10 * np.abs(w).max()  # fp16 rounding, a step far above
        np.testing.assert_allclose(got[key].numpy(), want, rtol=0, atol=atol)


@pytest.mark.timeout(180)
def test_learned_pooling_on_sharded_tables_exports_and_evaluates(tmp_path):
    """Learned weighted pooling (unpooled lookups from sharded tables, weights in their
    own tables): --inference-only evaluates it as training did; torch.export and ONNX
    give its outputs, at other batch sizes too; quantizing its tables is an error."""
    d = tmp_path / "ckpt"
    argv = [*BASE, "--weighted-pooling=learned", f"--checkpoint-dir={d}"]
    result = run(parse_args(argv))
    (_, path), *_ = list_checkpoints(d)
    got = run(parse_args([*argv, "--inference-only", f"--resume={path}"])).evals[0]
    for key, want in result.evals[-1].items():
        assert got[key] == pytest.approx(want, abs=1e-6), key
    cfg = parse_args(argv)
    arch = derive_arch(cfg.model, cfg.data.dense_features)
    test_data = make_data(cfg, arch, np.random.RandomState(0), eval_set=True)
    model = inference.inference_model(arch, cfg.model, result.final_weights)
    assert type(model.sparse_arch).__name__ == "SequencePoolingArch"
    batch = next(iter(test_data))
    program = inference.export(model, batch)
    cases = _other_batches(test_data, batch.sparse_features.keys(), arch.m_den)
    with torch.no_grad():
        for dense, sparse in cases:
            want = model(dense, sparse)
            torch.testing.assert_close(program.module()(dense, sparse), want, rtol=0, atol=1e-6)
    ort = pytest.importorskip("onnxruntime")
    inference.save_onnx(model, batch, str(tmp_path / "learned.onnx"))
    session = ort.InferenceSession(str(tmp_path / "learned.onnx"))
    for dense, sparse in cases:
        inputs = _onnx_inputs(dense, sparse)
        (onnx_out,) = session.run(None, inputs)
        with torch.no_grad():
            np.testing.assert_allclose(onnx_out, model(dense, sparse).numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="^--quantize-emb-with-bit quantizes pooled tables"):
        inference.quantize(model, 32, 8)
