"""Command line: the reference `dlrm_s_pytorch.py` flags, mapped onto the config tree.

A reference user changes only the program name. Flags the reference has and we do
not support yet are rejected by name, never silently ignored.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from dlrm_dist.config import (
    Config,
    apply_overrides,
    field_docs,
    load_toml,
    validate,
)
from dlrm_dist.errors import ConfigError

# flag -> (section, key); the reference's names where it has one.
FLAGS: dict[str, tuple[str, str]] = {
    "arch-sparse-feature-size": ("model", "sparse_feature_size"),
    "arch-embedding-size": ("model", "embedding_sizes"),
    "arch-mlp-bot": ("model", "mlp_bot"),
    "arch-mlp-top": ("model", "mlp_top"),
    "arch-interaction-op": ("model", "interaction"),
    "arch-interaction-itself": ("model", "interaction_itself"),
    "embedding-precision": ("model", "embedding_precision"),
    "weight-init": ("model", "weight_init"),
    "dcn-num-layers": ("model", "dcn_num_layers"),
    "dcn-low-rank-dim": ("model", "dcn_low_rank_dim"),
    "qr-flag": ("model", "qr_flag"),
    "qr-threshold": ("model", "qr_threshold"),
    "qr-operation": ("model", "qr_operation"),
    "qr-collisions": ("model", "qr_collisions"),
    "md-flag": ("model", "md_flag"),
    "md-threshold": ("model", "md_threshold"),
    "md-temperature": ("model", "md_temperature"),
    "md-round-dims": ("model", "md_round_dims"),
    "weighted-pooling": ("model", "weighted_pooling"),
    "loss-function": ("model", "loss_function"),
    "loss-weights": ("model", "loss_weights"),
    "loss-threshold": ("model", "loss_threshold"),
    "data-generation": ("data", "generation"),
    "data-size": ("data", "data_size"),
    "num-batches": ("data", "num_batches"),
    "mini-batch-size": ("data", "mini_batch_size"),
    "test-mini-batch-size": ("data", "test_mini_batch_size"),
    "arch-dense-feature-size": ("data", "dense_features"),
    "num-indices-per-lookup": ("data", "num_indices_per_lookup"),
    "num-indices-per-lookup-fixed": ("data", "num_indices_per_lookup_fixed"),
    "rand-data-dist": ("data", "rand_data_dist"),
    "rand-data-min": ("data", "rand_data_min"),
    "rand-data-max": ("data", "rand_data_max"),
    "rand-data-mu": ("data", "rand_data_mu"),
    "rand-data-sigma": ("data", "rand_data_sigma"),
    "round-targets": ("data", "round_targets"),
    "zipf-exponent": ("data", "zipf_exponent"),
    "multi-hot-sizes": ("data", "multi_hot_sizes"),
    "multi-hot-distribution": ("data", "multi_hot_distribution"),
    "data-set": ("data", "data_set"),
    "raw-data-file": ("data", "raw_data_file"),
    "processed-data-file": ("data", "processed_data_file"),
    "max-ind-range": ("data", "max_ind_range"),
    "data-cat-encoding": ("data", "cat_encoding"),
    "data-sub-sample-rate": ("data", "data_sub_sample_rate"),
    "data-randomize": ("data", "data_randomize"),
    "skip-bad-lines": ("data", "skip_bad_lines"),
    "preprocess-workers": ("data", "preprocess_workers"),
    "memory-map": ("data", "memory_map"),
    "optimizer": ("optim", "optimizer"),
    "learning-rate": ("optim", "learning_rate"),
    "lr-num-warmup-steps": ("optim", "lr_num_warmup_steps"),
    "lr-decay-start-step": ("optim", "lr_decay_start_step"),
    "lr-num-decay-steps": ("optim", "lr_num_decay_steps"),
    "sharding-type": ("sharding", "sharding_type"),
    "compute-kernel": ("sharding", "compute_kernel"),
    "embedding-cache-ratio": ("sharding", "cache_ratio"),
    "hbm-gb": ("sharding", "hbm_gb"),
    "ddr-gb": ("sharding", "ddr_gb"),
    "nepochs": ("train", "nepochs"),
    "numpy-rand-seed": ("train", "numpy_rand_seed"),
    "print-freq": ("train", "print_freq"),
    "print-time": ("train", "print_time"),
    "print-wall-time": ("train", "print_wall_time"),
    "print-precision": ("train", "print_precision"),
    "test-freq": ("train", "test_freq"),
    "debug-mode": ("train", "debug_mode"),
    "threads": ("train", "threads"),
    "progress-bar": ("train", "progress_bar"),
    "pipeline": ("train", "pipeline"),
    "mlperf-acc-threshold": ("train", "mlperf_acc_threshold"),
    "mlperf-auc-threshold": ("train", "mlperf_auc_threshold"),
    "use-gpu": ("train", "use_gpu"),
    "dist-backend": ("train", "dist_backend"),
    "dist-timeout": ("train", "dist_timeout"),
    "checkpoint-dir": ("checkpoint", "dir"),
    "checkpoint-every": ("checkpoint", "every"),
    "keep-last": ("checkpoint", "keep_last"),
    "resume": ("checkpoint", "resume"),
    "run-dir": ("metrics", "run_dir"),
    "enable-profiling": ("metrics", "enable_profiling"),
    "profile-start": ("metrics", "profile_start"),
    "profile-steps": ("metrics", "profile_steps"),
    "inference-only": ("inference", "inference_only"),
    "quantize-mlp-with-bit": ("inference", "quantize_mlp_with_bit"),
    "quantize-emb-with-bit": ("inference", "quantize_emb_with_bit"),
    "export": ("inference", "export"),
    "save-onnx": ("inference", "save_onnx"),
}
FLAG_FOR = {target: flag for flag, target in FLAGS.items()}
# The reference's names for settings that have a flag of our own (shown in --help).
ALIASES = {"save-model": "checkpoint-dir", "load-model": "resume"}
# Reference switches (no value) that set one of our settings to a value.
SWITCHES: dict[str, tuple[str, Any, str]] = {
    "dataset-multiprocessing": (
        "preprocess-workers",
        0,
        "the reference's switch for preprocessing the days in parallel: "
        "--preprocess-workers=0 (one process per CPU, at most one per day)",
    ),
}

# Reference flags that dlrm_dist does not implement yet.
UNSUPPORTED = (
    "activation-function "
    "data-trace-file data-trace-enable-padding "
    "num-workers test-num-workers sync-dense-params "
    "use-ipex local_rank "
    "plot-compute-graph tensor-board-filename "
    "mlperf-logging mlperf-bin-loader "
    "mlperf-bin-shuffle mlperf-grad-accum-iter lr-scheduler"
).split()


class RaisingParser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line) instead of exiting: only main() exits."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


# Why, where more can be said than "not yet".
_NO_LOADER_WORKERS = (
    "the Criteo loader has no DataLoader workers: every rank reads its slice of each batch "
    "from the memory maps itself"
)
UNSUPPORTED_WHY = {"num-workers": _NO_LOADER_WORKERS, "test-num-workers": _NO_LOADER_WORKERS}


class _Unsupported(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None):
        why = UNSUPPORTED_WHY.get(option_string.lstrip("-"), "")
        raise ConfigError(
            f"{option_string} is a reference flag that dlrm_dist does not support"
            + (f" ({why})" if why else " yet")
            + "; remove it (see --help for what is supported)"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = RaisingParser(
        prog="python -m dlrm_dist.train",
        description="Train Deep Learning Recommendation Model (DLRM) on TorchRec. "
        "Takes the reference dlrm_s_pytorch.py flags; precedence: flags > --config > defaults.",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="TOML config file (sections model, data, ...)")
    defaults = Config()
    for flag, (section, key) in FLAGS.items():
        default = getattr(getattr(defaults, section), key)
        if isinstance(default, dict):
            continue  # TOML only
        doc = field_docs(section)[key].replace("%", "%%")  # argparse formats help with %
        shown = "-".join(map(str, default)) if isinstance(default, list) else default
        kwargs: dict[str, Any] = {"dest": f"{section}.{key}", "help": f"{doc} [{shown}]"}
        if isinstance(default, bool):
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        parser.add_argument(f"--{flag}", **kwargs)
    for alias, flag in ALIASES.items():
        section, key = FLAGS[flag]
        help_ = f"the reference's name for --{flag} (a sharded checkpoint, not one file)"
        parser.add_argument(f"--{alias}", dest=f"{section}.{key}", metavar="PATH", help=help_)
    for switch, (flag, value, help_) in SWITCHES.items():
        section, key = FLAGS[flag]
        parser.add_argument(
            f"--{switch}", dest=f"{section}.{key}", action="store_const", const=value, help=help_
        )
    for flag in UNSUPPORTED:
        parser.add_argument(f"--{flag}", nargs="?", action=_Unsupported, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str] | None = None) -> Config:
    """argv -> validated Config. Raises ConfigError with a one-line message."""
    ns = vars(build_parser().parse_args(argv))
    cfg = Config()
    path = ns.pop("config", None)
    if path:
        cfg = apply_overrides(cfg, load_toml(path))
    overrides: dict[str, dict[str, Any]] = {}
    for dest, value in ns.items():
        section, key = dest.split(".")
        overrides.setdefault(section, {})[key] = value
    return validate(apply_overrides(cfg, overrides))
