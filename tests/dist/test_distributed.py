"""Model-parallel training in real processes (gloo on CPU): 2 ranks train exactly like
1 rank on the same global batch, for every CPU sharding type and optimizer; ranks stop
together at the end of data; a 4-rank smoke run."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dlrm_dist.train import main
from tests.common import tiny_job
from tests.multiprocess import agree_entry, launch, train_many

BASE = tiny_job(num_batches=12, nepochs=1, test_freq=6, print_freq=1000)


SHARDINGS = ["table_wise", "column_wise", "table_column_wise", "data_parallel"]


OPTIMIZERS = ["sgd", "adagrad"]


# random-fast: each rank draws its slice (pipelined); random: the reference's stream,
# sliced (plain loop); and random-fast with the plain loop
CASES = [(s, o, "random-fast", True) for s, o in itertools.product(SHARDINGS, OPTIMIZERS)]


CASES += [
    ("table_wise", "rwsadagrad", "random-fast", True),
    ("column_wise", "sgd", "random", True),
    ("table_wise", "adagrad", "random-fast", False),
    ("column_wise", "sgd", "random-fast", False),
]


def _argv(sharding: str, optimizer: str, generation: str, pipeline: bool) -> list[str]:
    return [
        *BASE,
        f"--sharding-type={sharding}",
        f"--optimizer={optimizer}",
        f"--data-generation={generation}",
        f"--pipeline={pipeline}",
    ]


@pytest.fixture(scope="module")
def parity_runs():
    argvs = [_argv(*case) for case in CASES]
    one = launch(1, train_many, argvs)[0]
    two = launch(2, train_many, argvs)
    return one, two


@pytest.mark.timeout(400)
@pytest.mark.parametrize(("sharding", "optimizer", "generation", "pipeline"), CASES)
def test_two_ranks_train_like_one(parity_runs, sharding, optimizer, generation, pipeline):
    one, two = parity_runs
    i = CASES.index((sharding, optimizer, generation, pipeline))
    ref, rank0, rank1 = one[i], two[0][i], two[1][i]
    assert len(ref["losses"]) == 12
    np.testing.assert_allclose(rank0["losses"], ref["losses"], rtol=1e-5, atol=1e-7)
    assert rank1["losses"] == rank0["losses"]  # every rank reports the global loss
    assert rank0["samples"] == ref["samples"] == 12 * 16
    for name, want in ref["weights"].items():
        np.testing.assert_allclose(rank0["weights"][name], want, rtol=1e-5, atol=1e-6)
    for got, want in zip(rank0["evals"], ref["evals"], strict=True):
        assert got.keys() == want.keys() == {"loss", "accuracy", "auc", "logloss", "ne"}
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6)


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    ("sharding", "optimizer"), [("table_wise", "adagrad"), ("column_wise", "sgd")]
)
def test_the_pipeline_trains_like_the_plain_loop(parity_runs, sharding, optimizer):
    one, two = parity_runs
    piped = CASES.index((sharding, optimizer, "random-fast", True))
    plain = CASES.index((sharding, optimizer, "random-fast", False))
    for runs in (one, two[0]):
        assert runs[piped]["pipelined"] and not runs[plain]["pipelined"]
        np.testing.assert_allclose(runs[piped]["losses"], runs[plain]["losses"], rtol=1e-6)
        for name, want in runs[plain]["weights"].items():
            np.testing.assert_allclose(runs[piped]["weights"][name], want, rtol=1e-6, atol=1e-7)
        for got, want in zip(runs[piped]["evals"], runs[plain]["evals"], strict=True):
            assert got == pytest.approx(want, rel=1e-6)


@pytest.mark.timeout(200)
def test_ranks_stop_together_at_the_end_of_data():
    # 3 full batches of 16 and a last one of 3 samples, which 2 ranks cannot split:
    # both ranks train 3 batches per epoch, two epochs, and finish
    argv = [*BASE[:7], "--num-batches=0", "--data-size=51", "--nepochs=2", "--print-freq=1"]
    argv += ["--progress-bar=false"]
    two = launch(2, train_many, [argv])
    assert len(two[0][0]["losses"]) == len(two[1][0]["losses"]) == 6
    assert two[0][0]["samples"] == 6 * 16


@pytest.mark.timeout(200)
def test_ranks_agree_on_the_fewest_batches():
    assert launch(3, agree_entry, [7, 5, 9]) == {0: 5, 1: 5, 2: 5}


@pytest.mark.timeout(300)
def test_four_rank_smoke_run():
    argv = [*BASE, "--mini-batch-size=32", "--sharding-type=table_wise"]
    four = launch(4, train_many, [argv])
    losses = [four[r][0]["losses"] for r in range(4)]
    assert all(row == losses[0] for row in losses)
    assert len(losses[0]) == 12 and np.isfinite(losses[0]).all()
    assert four[0][0]["weights"] is not None and four[1][0]["weights"] is None


@pytest.mark.timeout(200)
@pytest.mark.parametrize(
    "argv",
    [
        ["--mini-batch-size=3", "--num-batches=2"],  # the world does not divide the batch
        ["--mini-batch-size=4", "--data-size=1"],  # no batch the ranks can split
        [
            "--sharding-type=row_wise",  # needs CUDA
            "--arch-sparse-feature-size=4",
            "--arch-mlp-bot=4-4",
            "--mini-batch-size=4",
            "--num-batches=2",
        ],
    ],
    ids=["batch", "no-batch", "row-wise-on-cpu"],
)
def test_bad_input_under_two_ranks_exits_2_on_every_rank(argv):
    assert launch(2, main, argv) == {0: 2, 1: 2}
