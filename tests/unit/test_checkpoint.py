"""Checkpoints without a run: the config a checkpoint saves reads back as the same config."""

from __future__ import annotations

import tomllib

from dlrm_dist.cli import parse_args
from dlrm_dist.config import Config, apply_overrides, to_toml
from tests.common import TINY_JOB

BASE = TINY_JOB


# the reference's stream: evaluation (every 3 steps) draws from it between train batches
REFERENCE = [*BASE, "--data-generation=random", "--sharding-type=table_wise", "--test-freq=3"]


def test_the_saved_config_reads_back_as_the_same_config():
    cfg = parse_args(
        [*REFERENCE, "--loss-weights=0.5-2.0", '--checkpoint-dir=c d/"q"', "--resume=auto"]
    )
    cfg.sharding.tables = {"t_cat_0": {"sharding_type": "column_wise"}}
    assert apply_overrides(Config(), tomllib.loads(to_toml(cfg))) == cfg


def test_a_background_save_stages_a_copy_the_next_steps_cannot_change():
    import numpy as np
    import torch

    from dlrm_dist.checkpoint import CheckpointManager

    class Optimizer:
        def state_dict(self):
            return {"state": {"w": {"sum": acc}}}

    model, acc = torch.nn.Linear(3, 2), torch.ones(2, 3)
    manager = CheckpointManager(parse_args(BASE), model, Optimizer(), np.random.RandomState(0))
    staged = manager._stage()
    assert sorted(staged) == ["model.bias", "model.weight", "optimizer.w.sum"]
    want = {k: v.clone() for k, v in staged.items()}
    with torch.no_grad():  # the steps after the save was due
        model.weight.add_(1.0)
        acc.mul_(3.0)
    for key, value in staged.items():
        assert torch.equal(value, want[key]), key
    again = manager._stage()  # the next save: the same host buffers, the new values
    assert again["model.weight"].data_ptr() == staged["model.weight"].data_ptr()
    assert torch.equal(again["model.weight"], model.weight) and torch.equal(
        again["optimizer.w.sum"], torch.full((2, 3), 3.0)
    )


def test_where_a_start_resumes_in_words(tmp_path):
    import json

    from dlrm_dist.checkpoint import FORMAT, RECORD, describe_resume

    ckpt = [f"--checkpoint-dir={tmp_path}", "--resume=auto"]
    assert describe_resume(parse_args([*BASE, *ckpt])) == "starting fresh"
    (tmp_path / "step-8").mkdir()
    record = {
        "format": FORMAT,
        "state": {"step": 8, "epoch": 1, "batch": 2, "best_accuracy": 0.0},
        "world_size": 2,
        "numpy_rng": {"keys": [0] * 624},
        "torch_rng": "00",
        "files": {},
    }
    (tmp_path / "step-8" / RECORD).write_text(json.dumps(record))
    assert describe_resume(parse_args([*BASE, *ckpt])) == (
        f"resuming from {tmp_path / 'step-8'} (step 8, saved by 2 rank(s))"
    )
    missing = parse_args([*BASE, f"--resume={tmp_path / 'nowhere'}"])
    assert describe_resume(missing) == f"resuming as --resume {tmp_path / 'nowhere'} says"
