"""Config tree and reference flags: parsing, precedence, booleans, clear errors."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from dlrm_dist import cli, config
from dlrm_dist.cli import build_parser, parse_args
from dlrm_dist.config import Config, parse_bool
from dlrm_dist.data import criteo_files
from dlrm_dist.errors import ConfigError


def test_defaults_are_the_reference_defaults():
    cfg = parse_args([])
    assert cfg.model.sparse_feature_size == 2
    assert cfg.model.embedding_sizes == [4, 3, 2]
    assert cfg.model.mlp_bot == [4, 3, 2] and cfg.model.mlp_top == [4, 2, 1]
    assert cfg.model.interaction == "dot" and cfg.model.loss_function == "mse"
    assert cfg.data.num_indices_per_lookup == 10 and cfg.data.mini_batch_size == 1
    assert cfg.optim.learning_rate == 0.01 and cfg.train.numpy_rand_seed == 123
    assert cfg.train.test_freq == -1 and cfg.train.print_precision == 5


def test_reference_flags_map_onto_the_tree():
    cfg = parse_args(
        [
            "--arch-mlp-bot=13-512-256-64-16",
            "--arch-embedding-size",
            "100-1000",
            "--loss-weights=0.5-2.0",
            "--rand-data-dist=gaussian",
            "--rand-data-max=99",
            "--learning-rate=0.1",
            "--nepochs=3",
            "--arch-interaction-op",
            "cat",
            "--arch-sparse-feature-size=16",
        ]
    )
    assert cfg.model.mlp_bot == [13, 512, 256, 64, 16]
    assert cfg.model.embedding_sizes == [100, 1000]
    assert cfg.model.loss_weights == [0.5, 2.0]
    assert cfg.data.rand_data_dist == "gaussian" and cfg.data.rand_data_max == 99.0
    assert cfg.optim.learning_rate == 0.1 and cfg.train.nepochs == 3
    assert cfg.model.interaction == "cat"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--round-targets=False"], False),  # the reference's type=bool turned this on
        (["--round-targets", "false"], False),
        (["--round-targets=0"], False),
        (["--round-targets=True"], True),
        (["--round-targets"], True),
        (["--round-targets", "1"], True),
        ([], False),
    ],
)
def test_booleans_parse_properly(argv, expected):
    assert parse_args(argv).data.round_targets is expected


def test_parse_bool_rejects_garbage():
    with pytest.raises(ConfigError, match="not a boolean"):
        parse_bool("maybe")


def test_file_then_flags_precedence(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(
        "[model]\nmlp_bot = [13, 64, 16]\nsparse_feature_size = 16\n"
        "[data]\nmini_batch_size = 64\nround_targets = true\n[optim]\nlearning_rate = 0.5\n"
    )
    cfg = parse_args(["--config", str(path), "--learning-rate=0.2"])
    assert cfg.model.mlp_bot == [13, 64, 16]  # file over default
    assert cfg.data.mini_batch_size == 64 and cfg.data.round_targets is True
    assert cfg.optim.learning_rate == 0.2  # flag over file
    assert cfg.model.loss_function == "mse"  # default kept


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[model]\nmlp_botom = [1, 2]\n", "unknown setting \\[model\\] mlp_botom"),
        ("[modle]\nx = 1\n", "unknown section \\[modle\\]"),
        ('[data]\nmini_batch_size = "big"\n', "must be an integer"),
        ("[data]\nround_targets = 3\n", "must be true or false"),
        ("[model]\nembedding_sizes = 7\n", "must be a list"),
        ("[model\n", "not valid TOML"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        parse_args(["--config", str(path)])


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        parse_args(["--config", "/nonexistent/x.toml"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--save-onnx=m.onnx"], "--save-onnx: only with --inference-only"),
        (["--data-trace-file=x"], "--data-trace-file is a reference flag that dlrm_dist does not"),
        (["--use-ipex"], "--use-ipex is a reference flag"),
        (["--num-workers=4"], "--num-workers is a reference flag .* no DataLoader workers"),
        (["--test-num-workers", "16"], "--test-num-workers is a reference flag .*DataLoader"),
        (["--preprocess-workers=-1"], "--preprocess-workers must not be negative"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["--mini-batch-size=abc"], "--mini-batch-size\\) must be an integer"),
        (["--arch-mlp-bot=4-x-2"], "not a dash-separated list"),
        (["--arch-interaction-op=sum"], "--arch-interaction-op=sum is not supported"),
        (["--loss-function=hinge"], "--loss-function=hinge is not supported"),
        (["--optimizer=lamb"], "--optimizer=lamb is not supported"),
        (["--rand-data-dist=zipf"], "zipf needs --data-generation=random-fast"),
        (["--multi-hot-sizes=3,2"], "--multi-hot-sizes needs --data-generation=random-fast"),
        (
            ["--data-generation=random-fast", "--multi-hot-sizes=3,2"],
            "one positive size per table \\(3 tables\\), got 2",
        ),
        (["--dist-backend=mpi"], "--dist-backend=mpi is not supported"),
        (["--mini-batch-size=0"], "--mini-batch-size must be at least 1"),
        (["--loss-weights=1.0"], "needs two weights"),
        (["--lr-num-warmup-steps=10"], "warmup must finish before the decay starts"),
        (["--rand-data-dist=gaussian", "--rand-data-max=5"], "must lie in \\[0, 1\\]"),
        (["--sharding-type=grid"], "--sharding-type=grid is not supported"),
        (["--hbm-gb=-1"], "must not be negative"),
        (["--loss-function=bce", "--arch-mlp-top=4-2"], "must end in 1"),
    ],
)
def test_bad_flags_are_clear_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(argv)


def test_no_abbreviations():
    with pytest.raises(ConfigError):
        parse_args(["--arch-mlp=4-3-2"])


def test_help_lists_reference_flags_with_defaults():
    text = build_parser().format_help()
    for flag in ("--arch-mlp-bot", "--num-indices-per-lookup-fixed", "--lr-num-decay-steps"):
        assert flag in text
    assert "[4-3-2]" in text and "--qr-flag" in text and "--use-ipex" not in text


def test_default_config_object_is_independent():
    a, b = Config(), Config()
    a.model.mlp_bot.append(9)
    assert b.model.mlp_bot == [4, 3, 2]


def test_per_table_overrides_from_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        "[sharding]\nsharding_type = 'table_wise'\n"
        "[sharding.tables.t_cat_1]\nsharding_type = 'column_wise'\ncompute_kernel = 'fused'\n"
    )
    cfg = parse_args(["--config", str(path)])
    assert cfg.sharding.sharding_type == "table_wise"
    assert cfg.sharding.tables == {
        "t_cat_1": {"sharding_type": "column_wise", "compute_kernel": "fused"}
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[sharding.tables.t_cat_1]\nkernel = 'fused'\n", "unknown setting .*t_cat_1.kernel"),
        ("[sharding.tables.t_cat_1]\nsharding_type = 'diag'\n", "'diag' is not supported"),
        ("[sharding]\ntables = 3\n", "must be a table of per-table settings"),
    ],
)
def test_bad_per_table_overrides(tmp_path, body, message):
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        parse_args(["--config", str(path)])


def test_lists_take_commas_or_dashes():
    cfg = parse_args(
        ["--data-generation=random-fast", "--multi-hot-sizes=3,2,1", "--arch-mlp-bot=4-3-2"]
    )
    assert cfg.data.multi_hot_sizes == [3, 2, 1] and cfg.model.mlp_bot == [4, 3, 2]


def test_reference_data_switches_have_their_meaning():
    d = parse_args([]).data  # the reference's defaults: its in-memory shuffle, one process
    assert not d.memory_map and d.preprocess_workers == 1
    assert parse_args(["--memory-map"]).data.memory_map  # its reordered days' shuffle
    assert parse_args(["--memory-map", "True"]).data.memory_map
    assert parse_args(["--dataset-multiprocessing"]).data.preprocess_workers == 0
    assert parse_args(["--preprocess-workers=3"]).data.preprocess_workers == 3
    text = build_parser().format_help()
    for flag in ("--memory-map", "--dataset-multiprocessing", "--preprocess-workers"):
        assert flag in text
    assert "--multi-hot-distribution" in text and "--num-workers" not in text


def test_every_setting_has_one_flag_and_a_doc():
    assert all(f.metadata["doc"].strip() for _, f in config.settings())
    every = [(section, f.name) for section, f in config.settings()]
    flagged = [(section, f.name) for section, f in config.settings(command_line=True)]
    assert sorted(cli.FLAGS.values()) == sorted(flagged)  # each field once, each flag once
    assert [s for s in every if s not in flagged] == [("sharding", "tables")]  # TOML only
    names = [*cli.FLAGS, *cli.ALIASES, *cli.SWITCHES, *cli.UNSUPPORTED]
    assert len(names) == len(set(names))
    assert cli.FLAGS["arch-interaction-op"] == ("model", "interaction")  # the reference's names
    assert cli.FLAGS["data-size"] == ("data", "data_size")  # the field's name by default
    assert cli.ALIASES == {"save-model": "checkpoint-dir", "load-model": "resume"}
    assert cli.SWITCHES["dataset-multiprocessing"][:2] == ("preprocess-workers", 0)


def test_help_shows_every_fields_doc_default_and_choices(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100000")  # no wrapped lines
    entries = build_parser().format_help().split("\n  -")  # "-flag METAVAR\n   help [default]"
    for flag, (section, key) in cli.FLAGS.items():
        entry = " ".join(next(e for e in entries if e.startswith(f"-{flag} ")).split())
        default = getattr(getattr(Config(), section), key)
        shown = "-".join(map(str, default)) if isinstance(default, list) else str(default)
        assert f"{config.field_docs(section)[key]} [{shown}]" in entry, flag
        allowed = config.choices(section, key)
        if allowed:
            metavar = "{" + ",".join(str(c) if c != "" else '""' for c in allowed) + "}"
            assert entry.startswith(f"-{flag} {metavar} "), flag


def test_choices_are_the_fields_literal_types():
    declared = {}
    for section, cls in config.SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if typing.get_origin(hints[f.name]) is typing.Literal:
                declared[(section, f.name)] = typing.get_args(hints[f.name])
    assert config.CHOICES == declared
    assert config.CHOICES[("model", "interaction")] == ("dot", "cat", "dcn")
    assert config.CHOICES[("inference", "quantize_emb_with_bit")] == (4, 8, 32)
    assert tuple(criteo_files.DAYS) == config.CHOICES[("data", "data_set")]
    for arg, message in [
        ("--arch-interaction-op=sum", "--arch-interaction-op=sum is not supported; choose one of "
         "dot | cat | dcn"),
        ("--quantize-mlp-with-bit=7", "--quantize-mlp-with-bit=7 is not supported; choose one of "
         "8 | 16 | 32"),
        ("--dist-backend=mpi", "--dist-backend=mpi is not supported; choose one of  | gloo | nccl"),
        ("--threads=-1", "--threads must not be negative"),
        ("--profile-steps=0", "--profile-steps must be at least 1"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError) as caught:
            parse_args([arg])
        assert str(caught.value) == message


def test_shape_settings_are_the_fields_that_change_parameters():
    assert config.SHAPE_SETTINGS == {
        ("model", "sparse_feature_size"),
        ("model", "embedding_sizes"),
        ("model", "mlp_bot"),
        ("model", "mlp_top"),
        ("model", "interaction"),
        ("model", "interaction_itself"),
        ("data", "dense_features"),
        ("optim", "optimizer"),
    }
