"""The config tree: one root dataclass with a section per component.

Precedence is CLI > TOML file > defaults. Defaults are the reference
`dlrm_s_pytorch.py` defaults, so a reference command line means the same here.

A field is the one place that says everything about its setting (`_f`): its default, its
one-line doc (with unit; `--help` shows it), its flag (the field's name with dashes unless
given: the reference's name where it has one), the reference's other names for it, its allowed
values (a `Literal[...]` type) and lower bound, and whether it changes a parameter's shape
(checkpoint.py refuses to resume across those). The flag table (`cli.FLAGS`), `CHOICES` and
`SHAPE_SETTINGS` are read off the fields; each section checks itself (`check()`), and
`check_across` holds the rules that read two sections. Adding a flag is adding its field.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tomllib
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dlrm_dist.errors import ConfigError

# Criteo's categorical features C1..C26: the tables of --data-generation=dataset. Here, where
# the multi-hot rule needs it, so that this module imports no data module; data/criteo_tsv
# takes its NUM_SPARSE from here.
CRITEO_TABLES = 26


def _f(
    default: Any,
    doc: str,
    *,
    flag: str = "",
    aliases: tuple[str, ...] = (),
    switch: tuple[str, Any, str] | None = None,
    least: float | None = None,
    shape: bool = False,
) -> Any:
    """A setting. flag: its name on the command line, without -- (default: the field's name
    with dashes); aliases: the reference's other names for it (a path, shown in --help);
    switch: (name, value, help) of a reference switch that sets it to value; least: its
    lowest value; shape: it changes a parameter's shape or the optimizer state."""
    metadata = {
        "doc": doc,
        "flag": flag,
        "aliases": aliases,
        "switch": switch,
        "least": least,
        "shape": shape,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


ShardingType = Literal[
    "auto",
    "table_wise",
    "row_wise",
    "column_wise",
    "table_row_wise",
    "table_column_wise",
    "data_parallel",
]
ComputeKernel = Literal["auto", "fused", "dense", "fused_uvm", "fused_uvm_caching"]


@dataclass
class ModelConfig:
    sparse_feature_size: int = _f(
        2, "embedding dim D of every table", flag="arch-sparse-feature-size", least=1, shape=True
    )
    embedding_sizes: list[int] = _f(
        [4, 3, 2],
        "rows of each embedding table, in table order",
        flag="arch-embedding-size",
        shape=True,
    )
    mlp_bot: list[int] = _f(
        [4, 3, 2],
        "bottom MLP widths, input (dense features) to output (D)",
        flag="arch-mlp-bot",
        shape=True,
    )
    mlp_top: list[int] = _f(
        [4, 2, 1],
        "top MLP widths after the interaction (its width is prepended)",
        flag="arch-mlp-top",
        shape=True,
    )
    interaction: Literal["dot", "cat", "dcn"] = _f(
        "dot",
        "feature interaction: dot | cat | dcn (DCN v2 cross net)",
        flag="arch-interaction-op",
        shape=True,
    )
    interaction_itself: bool = _f(
        False,
        "dot: include each feature's product with itself",
        flag="arch-interaction-itself",
        shape=True,
    )
    embedding_precision: Literal["fp32", "fp16"] = _f(
        "fp32", "embedding table weights: fp32 | fp16"
    )
    dense_precision: Literal["fp32", "bf16"] = _f(
        "fp32",
        "training: the MLPs and the interaction in fp32 | bf16 (autocast; weights, optimizer "
        "and loss stay fp32); evaluation and inference always fp32",
    )
    weight_init: Literal["reference", "sharded"] = _f(
        "reference",
        "initial table weights: reference (the reference's numpy stream, every table drawn "
        "whole on every rank) | sharded (each shard draws its own rows on its device, the "
        "same uniform(+-sqrt(1/rows)) law: for tables larger than host memory)",
    )
    dcn_num_layers: int = _f(3, "dcn: cross layers", least=1)
    dcn_low_rank_dim: int = _f(512, "dcn: rank of each cross layer's weight (W V)", least=1)
    qr_flag: bool = _f(False, "quotient-remainder tables for tables above qr_threshold rows")
    qr_threshold: int = _f(200, "qr: tables with more rows than this are split, rows")
    qr_operation: Literal["concat", "add", "mult"] = _f(
        "mult", "qr: combine the quotient and remainder bags: concat|add|mult"
    )
    qr_collisions: int = _f(4, "qr: c, rows of the remainder table (quotient: ceil(rows / c))")
    md_flag: bool = _f(False, "mixed-dimension tables (md_solver's dims) above md_threshold rows")
    md_threshold: int = _f(200, "md: tables with more rows than this get their own dim, rows")
    md_temperature: float = _f(0.3, "md: alpha, dim ~ rows^-alpha (0 = every table D)")
    md_round_dims: bool = _f(False, "md: round each dim to the nearest power of 2")
    weighted_pooling: Literal["", "fixed", "learned"] = _f(
        "", "per-row weights in every bag sum: fixed (ones) | learned (trained); empty = none"
    )
    loss_function: Literal["mse", "bce", "wbce"] = _f("mse", "loss: mse | bce | wbce")
    loss_weights: list[float] = _f([1.0, 1.0], "wbce weights for target 0 and target 1")
    loss_threshold: float = _f(0.0, "clamp outputs to [t, 1-t] when 0 < t < 1")

    def check(self) -> None:
        _check_fields(self)
        if not self.embedding_sizes or min(self.embedding_sizes) < 1:
            raise ConfigError("--arch-embedding-size needs at least one table, each with >= 1 row")
        if len(self.mlp_bot) < 2 or min(self.mlp_bot) < 1:
            raise ConfigError("--arch-mlp-bot needs at least two positive widths, e.g. 4-3-2")
        if len(self.mlp_top) < 1 or min(self.mlp_top) < 1:
            raise ConfigError("--arch-mlp-top needs positive widths, e.g. 4-2-1")
        if len(self.loss_weights) != 2:
            raise ConfigError("--loss-weights needs two weights (target 0, target 1), e.g. 1.0-1.0")
        if self.qr_flag and self.qr_collisions < 1:
            raise ConfigError("--qr-collisions must be at least 1 (rows of each remainder table)")
        if self.md_flag and self.md_temperature < 0:
            raise ConfigError("--md-temperature must not be negative (0 = every table D wide)")
        for flag, on, what in (
            ("--qr-flag", self.qr_flag, "quotient remainder"),
            ("--md-flag", self.md_flag, "mixed dimensions"),
        ):
            if on and self.weighted_pooling:
                raise ConfigError(
                    f"{what} with weighted pooling is not supported (as in the reference): "
                    f"drop --weighted-pooling or {flag}"
                )
        if self.weight_init == "sharded" and (
            self.qr_flag or self.md_flag or self.weighted_pooling
        ):
            raise ConfigError(
                "--weight-init=sharded covers plain tables only: QR, MD and learned-pooling "
                "weights start as the reference draws them; use --weight-init=reference"
            )
        if self.qr_flag and self.md_flag:
            raise ConfigError(
                "quotient remainder with mixed dimensions is not supported (the reference's QR "
                "tables take one dim): drop --qr-flag or --md-flag"
            )
        if self.loss_function in ("bce", "wbce") and self.mlp_top[-1] != 1:
            raise ConfigError("--arch-mlp-top must end in 1 for bce/wbce (one click probability)")


@dataclass
class DataConfig:
    generation: Literal["random", "random-fast", "dataset"] = _f(
        "random",
        "data source: random (the reference's exact generator, drawn whole on every rank "
        "and sliced) | random-fast (vectorized, each rank draws only its slice)",
        flag="data-generation",
    )
    draw_on: Literal["device", "host"] = _f(
        "device",
        "random-fast: where batches are drawn: device (on CUDA, by the same generator in "
        "torch on the GPU: the same numbers, no host cores in the GPU's way) | host (numpy)",
        flag="random-fast-draw-on",
    )
    data_size: int = _f(1, "samples per epoch (ignored when num_batches > 0)", least=0)
    num_batches: int = _f(0, "batches per epoch; 0 = ceil(data_size / mini_batch_size)", least=0)
    mini_batch_size: int = _f(1, "global batch size, samples", least=1)
    test_mini_batch_size: int = _f(-1, "evaluation batch size; -1 = mini_batch_size")
    dense_features: int = _f(
        0,
        "dense features per sample; 0 = first bottom-MLP width",
        flag="arch-dense-feature-size",
        shape=True,
    )
    num_indices_per_lookup: int = _f(10, "max (or fixed) indices per bag", least=1)
    num_indices_per_lookup_fixed: bool = _f(False, "every bag has exactly that many indices")
    rand_data_dist: Literal["uniform", "gaussian", "zipf"] = _f(
        "uniform", "index distribution: uniform | gaussian | zipf (zipf: random-fast only)"
    )
    rand_data_min: float = _f(0.0, "gaussian: lowest index (clip)")
    rand_data_max: float = _f(1.0, "gaussian: highest index (clip)")
    rand_data_mu: float = _f(-1.0, "gaussian: mean; -1 = (min + max) / 2")
    rand_data_sigma: float = _f(1.0, "gaussian: standard deviation")
    round_targets: bool = _f(False, "round targets to 0/1")
    synthetic_labels: Literal["random", "planted"] = _f(
        "random",
        "random-fast targets: random (uniforms, or 0/1 with round_targets: nothing to learn) | "
        "planted (0/1 clicks of a seeded teacher over each sample's own dense features and "
        "ids, data/planted.py: learnable, with a known best AUC)",
    )
    test_num_batches: int = _f(
        0,
        "random-fast: batches of the test split (of test_mini_batch_size); 0 = as many as "
        "training, as the reference",
        least=0,
    )
    zipf_exponent: float = _f(1.05, "zipf: exponent s, P(row of popularity rank k) ~ 1/k^s")
    multi_hot_sizes: list[int] = _f(
        [],
        "fixed bag size per table (MLPerf style): random-fast draws that many indices; dataset "
        "expands each Criteo id into a bag of that many (itself first); empty = bag-size flags "
        "(random-fast), one id (dataset)",
    )
    multi_hot_distribution: Literal["uniform", "pareto"] = _f(
        "uniform",
        "dataset with multi_hot_sizes: the bags' other ids, uniform over the table's rows | "
        "pareto (MLPerf's int(pareto(a=0.25)) mod rows); fixed per (seed, table, id, slot)",
    )
    data_set: Literal["kaggle", "terabyte"] = _f(
        "kaggle", "dataset: Criteo kaggle (train.txt) | terabyte (day_0..day_23)"
    )
    raw_data_file: str = _f(
        "", "dataset: raw Criteo TSV (kaggle: train.txt; terabyte: the prefix of day_N[.gz])"
    )
    processed_data_file: str = _f(
        "", "dataset: directory of the processed data; empty = <raw-data-file>_processed"
    )
    max_ind_range: int = _f(-1, "dataset: categorical values modulo this before mapping, when > 0")
    cat_encoding: Literal["vocab", "hash"] = _f(
        "vocab",
        "dataset: ids = rows of each feature's vocabulary | hash (value mod max_ind_range)",
        flag="data-cat-encoding",
    )
    data_sub_sample_rate: float = _f(0.0, "dataset: drop this fraction of negatives, [0, 1)")
    data_randomize: Literal["total", "day", "none", "total-bijection", "day-bijection"] = _f(
        "total",
        "dataset: shuffle the training rows: total | day (within each day): the reference's "
        "np.random.permutation (8 bytes a training row per rank) | none | total-bijection | "
        "day-bijection: a keyed bijection instead (no memory; not the reference's order)",
    )
    skip_bad_lines: bool = _f(False, "dataset: skip (and count) malformed raw lines, else fail")
    preprocess_workers: int = _f(
        1,
        "dataset: processes preprocessing runs in (Terabyte's days parsed, every day's ids "
        "mapped in parallel); 0 = one per CPU, at most one per day",
        least=0,
        switch=(
            "dataset-multiprocessing",
            0,
            "the reference's switch for preprocessing the days in parallel: "
            "--preprocess-workers=0 (one process per CPU, at most one per day)",
        ),
    )
    memory_map: bool = _f(
        False,
        "dataset: the reference's --memory-map: total | day shuffle as its reordered days "
        "(drawn once, at start-up) instead of its in-memory permutation; the processed days "
        "are memory-mapped either way",
    )

    def check(self) -> None:
        _check_fields(self)
        if self.data_size < 1 and self.num_batches < 1:
            raise ConfigError("--data-size must be at least 1 (or set --num-batches)")
        if self.rand_data_dist == "zipf" and self.generation != "random-fast":
            raise ConfigError("--rand-data-dist=zipf needs --data-generation=random-fast")
        if self.zipf_exponent <= 0:
            raise ConfigError("--zipf-exponent must be positive")
        for flag, on in (
            ("--synthetic-labels=planted", self.synthetic_labels == "planted"),
            ("--test-num-batches", self.test_num_batches > 0),
        ):
            if on and self.generation != "random-fast":
                raise ConfigError(f"{flag} needs --data-generation=random-fast")
        if self.generation == "dataset":
            if not (self.raw_data_file or self.processed_data_file):
                raise ConfigError(
                    "--data-generation=dataset needs --raw-data-file (and/or --processed-data-file)"
                )
            if not 0.0 <= self.data_sub_sample_rate < 1.0:
                raise ConfigError("--data-sub-sample-rate must lie in [0, 1)")
            if self.cat_encoding == "hash" and self.max_ind_range <= 0:
                raise ConfigError(
                    "--data-cat-encoding=hash needs --max-ind-range > 0 (rows per table)"
                )
            if self.max_ind_range >= 1 << 31:
                raise ConfigError("--max-ind-range must be below 2^31 (row ids are int32)")

    def check_multi_hot(self, tables: int) -> None:
        """Multi-hot bags: random-fast draws them, dataset expands Criteo's ids into them; the
        reference's exact generator has none. One size >= 1 per table: the model's `tables`
        (random-fast), Criteo's 26 (dataset)."""
        sizes = self.multi_hot_sizes
        if sizes:
            if self.generation == "random":
                raise ConfigError(
                    "--multi-hot-sizes needs --data-generation=random-fast or dataset (the "
                    "reference's random data has random bag sizes)"
                )
            where = f"{tables} tables"
            if self.generation == "dataset":
                tables = CRITEO_TABLES
                where = f"{tables} tables: Criteo's categorical features"
            if len(sizes) != tables:
                raise ConfigError(
                    f"--multi-hot-sizes needs one positive size per table ({where}), "
                    f"got {len(sizes)}"
                )
            if min(sizes) < 1:
                t = min(range(tables), key=lambda i: sizes[i])
                raise ConfigError(
                    f"--multi-hot-sizes needs one positive size per table: table {t} has {sizes[t]}"
                )
        if self.multi_hot_distribution != "uniform" and not (
            self.generation == "dataset" and sizes
        ):
            raise ConfigError(
                f"--multi-hot-distribution={self.multi_hot_distribution} needs "
                "--data-generation=dataset and --multi-hot-sizes (random-fast's bags follow "
                "--rand-data-dist)"
            )


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adagrad", "rwsadagrad", "adam"] = _f(
        "sgd",
        "sgd | adagrad | rwsadagrad (row-wise on embeddings, elementwise on MLPs) | adam; "
        "fused into backward for the embeddings",
        shape=True,  # the optimizer state a checkpoint holds
    )
    learning_rate: float = _f(0.01, "base learning rate")
    lr_num_warmup_steps: int = _f(0, "linear warmup steps", least=0)
    lr_decay_start_step: int = _f(0, "step at which the power-2 decay starts", least=0)
    lr_num_decay_steps: int = _f(0, "steps the decay lasts; 0 = no decay", least=0)

    def check(self) -> None:
        _check_fields(self)
        if self.lr_decay_start_step < self.lr_num_warmup_steps:
            raise ConfigError(
                "Learning rate warmup must finish before the decay starts: set "
                "--lr-decay-start-step >= --lr-num-warmup-steps"
            )


@dataclass
class ShardingConfig:
    sharding_type: ShardingType = _f(
        "auto",
        "embedding sharding: auto (the planner picks) | table_wise | row_wise | column_wise "
        "| table_row_wise | table_column_wise | data_parallel",
    )
    compute_kernel: ComputeKernel = _f(
        "auto", "embedding kernel: auto | fused | dense | fused_uvm | fused_uvm_caching"
    )
    cache_ratio: float = _f(
        0.0,
        "fused_uvm_caching: share of each table's rows cached in HBM (e.g. 0.01), the rest "
        "in host memory; 0 = the planner's choice",
        flag="embedding-cache-ratio",
    )
    hbm_gb: float = _f(0.0, "device memory per rank for the planner, GB; 0 = the device's")
    ddr_gb: float = _f(0.0, "host memory per rank for the planner, GB; 0 = the host's share")
    tables: dict[str, dict[str, str]] = _f(
        {},
        "per-table overrides, TOML only: [sharding.tables.t_cat_0] sharding_type = ..., "
        "compute_kernel = ...",
    )

    def check(self) -> None:
        _check_fields(self)
        if not 0 <= self.cache_ratio <= 1:
            raise ConfigError("--embedding-cache-ratio must lie in [0, 1], e.g. 0.01")
        if self.hbm_gb < 0 or self.ddr_gb < 0:
            raise ConfigError("--hbm-gb and --ddr-gb must not be negative (0 = detect)")
        for table, settings in self.tables.items():
            for key in TABLE_KEYS:
                allowed = choices("sharding", key)
                if key in settings and settings[key] not in allowed:
                    raise ConfigError(
                        f"[sharding.tables.{table}] {key} = {settings[key]!r} is not supported; "
                        "choose one of " + " | ".join(allowed)
                    )


# The [sharding] settings a [sharding.tables.NAME] table may override (TOML only).
TABLE_KEYS = ("sharding_type", "compute_kernel")


@dataclass
class TrainConfig:
    nepochs: int = _f(1, "epochs over the data", least=0)
    numpy_rand_seed: int = _f(123, "seed of the data and initial weights")
    print_freq: int = _f(1, "log every N iterations", least=1)
    print_time: bool = _f(False, "show ms/it in the log lines (else -1, as the reference)")
    print_wall_time: bool = _f(False, "append the wall-clock time (HH:MM) to log lines")
    print_precision: int = _f(5, "digits when printing parameters")
    test_freq: int = _f(-1, "evaluate every N iterations; -1 = never")
    debug_mode: bool = _f(False, "print arch, data and parameters like the reference")
    threads: int = _f(0, "torch threads per rank; 0 = cores / local ranks", least=0)
    progress_bar: bool = _f(True, "show a progress bar when stdout is a terminal")
    pipeline: bool = _f(
        True,
        "overlap the next batch's input all-to-all with this step (TrainPipelineSparseDist); "
        "not with --data-generation=random or --debug-mode, whose batches share one stream",
    )
    draw_ahead: bool = _f(
        True,
        "--data-generation=random: draw the next batch in a worker process while this one "
        "trains, when the rank has a core to spare for it (the same numbers)",
    )
    mlperf_acc_threshold: float = _f(0.0, "stop when test accuracy (percent) exceeds it; 0 = never")
    mlperf_auc_threshold: float = _f(0.0, "stop when test AUC exceeds it; 0 = never")
    use_gpu: bool = _f(False, "train on CUDA (each rank on its LOCAL_RANK device)")
    tf32: bool = _f(
        False,
        "CUDA: TF32 tensor cores for the fp32 matmuls of the MLPs and the interaction "
        "(a 10-bit mantissa per product, fp32 sums); no effect on CPU",
    )
    dist_backend: Literal["", "gloo", "nccl"] = _f(
        "", "process-group backend; empty = nccl on CUDA, gloo on CPU"
    )
    dist_timeout: float = _f(
        300.0,
        "seconds a rank waits in a collective for a peer before it stops with an error",
        least=1,
    )

    def check(self) -> None:
        _check_fields(self)


@dataclass
class CheckpointConfig:
    dir: str = _f(
        "",
        "directory the sharded checkpoints go to (one step-N folder each); empty = none",
        flag="checkpoint-dir",
        aliases=("save-model",),
    )
    every: int = _f(
        0,
        "save every N steps, and at the end; 0 = only at the end",
        flag="checkpoint-every",
        least=0,
    )
    keep_last: int = _f(
        0, "after a save, delete all but the newest K checkpoints; 0 = keep all", least=0
    )
    resume: str = _f(
        "",
        "empty = start fresh | auto = the newest complete checkpoint in --checkpoint-dir "
        "(fresh if none) | PATH = that checkpoint, or the newest in that directory",
        aliases=("load-model",),
    )
    async_save: bool = _f(
        True,
        "write checkpoints in the background: the step waits only while this rank's state "
        "is copied to host memory (one more copy of its shards and optimizer state); at most "
        "one save in flight; false = the step waits for the whole save",
        flag="async-checkpoint",
    )

    def check(self) -> None:
        _check_fields(self)
        if not self.dir:
            for flag, bad in (
                ("--checkpoint-every", self.every > 0),
                ("--keep-last", self.keep_last > 0),
            ):
                if bad:
                    raise ConfigError(f"{flag} needs --checkpoint-dir")
            if self.resume == "auto":
                raise ConfigError("--resume=auto needs --checkpoint-dir (where to look)")


@dataclass
class MetricsConfig:
    run_dir: str = _f("", "write metrics.jsonl and TensorBoard events here (rank 0); empty = none")
    numbered_run_dir: bool = _f(
        False,
        "write into a new numbered subdirectory of --run-dir each run (<run-dir>/001, 002, "
        "...), so a rerun never mixes its records with an earlier run's",
    )
    plots: bool = _f(
        False,
        "at the end of the run, write the report's PNG plots and summary.txt into the run "
        "directory (what python -m dlrm_dist.report RUN_DIR writes)",
    )
    enable_profiling: bool = _f(
        False, "write a PyTorch profiler trace (Chrome/TensorBoard) to <run-dir>/profile"
    )
    profile_start: int = _f(5, "profiling: first step traced (after warm-up)", least=0)
    profile_steps: int = _f(5, "profiling: steps traced", least=1)

    def check(self) -> None:
        _check_fields(self)
        if self.enable_profiling and not self.run_dir:
            raise ConfigError("--enable-profiling needs --run-dir (where the trace goes)")
        for flag, on in (("--numbered-run-dir", self.numbered_run_dir), ("--plots", self.plots)):
            if on and not self.run_dir:
                raise ConfigError(f"{flag} needs --run-dir")


@dataclass
class InferenceConfig:
    inference_only: bool = _f(False, "evaluate the model (--resume a checkpoint) on the test data")
    quantize_mlp_with_bit: Literal[8, 16, 32] = _f(
        32, "inference: MLP Linear layers 8 (int8, dynamic) | 16 (fp16 weights) | 32 (float)"
    )
    quantize_emb_with_bit: Literal[4, 8, 32] = _f(
        32, "inference: embedding rows 4 | 8 (uint, per-row scale and bias) | 32 (float)"
    )
    export: str = _f("", "inference: write the torch.export program (.pt2) here; empty = none")
    save_onnx: str = _f("", "inference: write the model as ONNX here; empty = none")

    def check(self) -> None:
        """Quantization and export are for --inference-only."""
        _check_fields(self)
        asked = [
            flag
            for flag, on in (
                ("--quantize-mlp-with-bit", self.quantize_mlp_with_bit != 32),
                ("--quantize-emb-with-bit", self.quantize_emb_with_bit != 32),
                ("--export", bool(self.export)),
                ("--save-onnx", bool(self.save_onnx)),
            )
            if on
        ]
        if asked and not self.inference_only:
            raise ConfigError(f"{' and '.join(asked)}: only with --inference-only (for inference)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}


def check_across(cfg: Config) -> None:
    """The rules that read two sections (each section checks itself first)."""
    m, d, inf = cfg.model, cfg.data, cfg.inference
    if d.rand_data_dist == "gaussian":
        last = min(m.embedding_sizes) - 1
        if d.rand_data_min < 0 or d.rand_data_max > last:
            raise ConfigError(
                f"--rand-data-min/--rand-data-max must lie in [0, {last}]"
                " (the smallest table's last row) for gaussian indices"
            )
    d.check_multi_hot(len(m.embedding_sizes))
    if inf.quantize_emb_with_bit != 32:  # as in the reference: plain tables only
        for flag, on, what in (
            ("--weighted-pooling", bool(m.weighted_pooling), "weighted pooling"),
            ("--qr-flag", m.qr_flag, "quotient remainder"),
            ("--md-flag", m.md_flag, "mixed dimensions"),
        ):
            if on:
                raise ConfigError(
                    f"4 and 8-bit embedding quantization with {what} is not supported (as in "
                    f"the reference): drop --quantize-emb-with-bit or {flag}"
                )


def validate(cfg: Config) -> Config:
    """Check value ranges and choices; raise ConfigError naming the flag to change."""
    for name in SECTIONS:
        getattr(cfg, name).check()
    check_across(cfg)
    return cfg


# --- what the fields declare --------------------------------------------------------------


def settings(command_line: bool = False) -> Iterator[tuple[str, dataclasses.Field]]:
    """(section, field) of every setting, in the order of the tree; with command_line, only
    those that have a flag (not the TOML tables, [sharding] tables)."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if not (command_line and typing.get_origin(_hints(cls)[f.name]) is dict):
                yield section, f


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _choices_of(cls: type, key: str) -> tuple[Any, ...]:
    want = _hints(cls)[key]
    return typing.get_args(want) if typing.get_origin(want) is Literal else ()


def _field(section: str, key: str) -> dataclasses.Field | None:
    return next((f for f in dataclasses.fields(SECTIONS[section]) if f.name == key), None)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or f.name.replace("_", "-")


def flag_name(section: str, key: str) -> str:
    """The command-line flag (without --) that sets [section] key."""
    f = _field(section, key) if section in SECTIONS else None
    return _flag(f) if f is not None else key.replace("_", "-")


def choices(section: str, key: str) -> tuple[Any, ...]:
    """The values [section] key allows (its Literal type); () for any of its type."""
    return _choices_of(SECTIONS[section], key)


def field_docs(section: str) -> dict[str, str]:
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(SECTIONS[section])}


CHOICES: dict[tuple[str, str], tuple[Any, ...]] = {
    (section, f.name): allowed for section, f in settings() if (allowed := choices(section, f.name))
}
# settings that change a tensor's shape or the optimizer state a checkpoint holds
SHAPE_SETTINGS = frozenset((section, f.name) for section, f in settings() if f.metadata["shape"])


def _check_fields(section: Any) -> None:
    """The choices and lower bounds a section's fields declare."""
    for f in dataclasses.fields(section):
        value, flag = getattr(section, f.name), f"--{_flag(f)}"
        allowed = _choices_of(type(section), f.name)
        if allowed and value not in allowed:
            raise ConfigError(
                f"{flag}={value} is not supported; choose one of " + " | ".join(map(str, allowed))
            )
        least = f.metadata["least"]
        if least is not None and value < least:
            raise ConfigError(
                f"{flag} must " + ("not be negative" if least == 0 else f"be at least {least}")
            )


# --- reading settings ---------------------------------------------------------------------


def parse_bool(text: str | bool) -> bool:
    """Parse a boolean flag value; unlike the reference, 'False' means false."""
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on", "t", "y"):
        return True
    if low in ("0", "false", "no", "off", "f", "n"):
        return False
    raise ConfigError(f"{text!r} is not a boolean: use true or false")


def parse_dashed(text: str, item: type) -> list:
    """'13-512-256' -> [13, 512, 256], the reference's list syntax; '3,2,1' works too."""
    text = str(text).strip()
    if not text:
        return []
    try:
        return [item(part) for part in text.split("," if "," in text else "-")]
    except ValueError:
        kind = "integers" if item is int else "numbers"
        raise ConfigError(f"{text!r} is not a dash-separated list of {kind}") from None


def coerce(section: str, key: str, value: Any) -> Any:
    """Check and convert one setting to its declared type; raise ConfigError if wrong."""
    hints = _hints(SECTIONS[section])
    if key not in hints:
        known = ", ".join(sorted(hints))
        raise ConfigError(f"unknown setting [{section}] {key}; known: {known}")
    want = hints[key]
    where = f"[{section}] {key} (--{flag_name(section, key)})"
    if want is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return parse_bool(value)
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if typing.get_origin(want) is Literal:  # its choices are checked by validate
        want = type(typing.get_args(want)[0])
    if typing.get_origin(want) is dict:
        return coerce_tables(where, value)
    if typing.get_origin(want) is list:
        item = typing.get_args(want)[0]
        if isinstance(value, str):
            return parse_dashed(value, item)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [coerce_scalar(where, item, v) for v in value]
    return coerce_scalar(where, want, value)


def coerce_tables(where: str, value: Any) -> dict[str, dict[str, str]]:
    """{table: {sharding_type|compute_kernel: str}}; names are checked against the model
    later, when the tables are known."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table of per-table settings")
    out: dict[str, dict[str, str]] = {}
    for table, settings in value.items():
        if not isinstance(settings, dict):
            raise ConfigError(f'{where}.{table} must be a table, e.g. sharding_type = "..."')
        for key, item in settings.items():
            if key not in TABLE_KEYS:
                raise ConfigError(
                    f"unknown setting {where}.{table}.{key}; known: {', '.join(TABLE_KEYS)}"
                )
            coerce_scalar(f"{where}.{table}.{key}", str, item)
        out[str(table)] = dict(settings)
    return out


def coerce_scalar(where: str, want: type, value: Any) -> Any:
    if want is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
    if want is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if want is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {want}")  # pragma: no cover


def apply_overrides(cfg: Config, overrides: dict[str, dict[str, Any]]) -> Config:
    """Return a copy of cfg with {section: {key: value}} applied (values coerced)."""
    cfg = dataclasses.replace(
        cfg, **{name: dataclasses.replace(getattr(cfg, name)) for name in SECTIONS}
    )
    for section, values in overrides.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown section [{section}]; known: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of settings")
        for key, value in values.items():
            setattr(getattr(cfg, section), key, coerce(section, key, value))
    return cfg


def load_toml(path: str | Path) -> dict[str, dict[str, Any]]:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def to_toml(cfg: Config) -> str:
    """cfg as a TOML file that `--config` reads back to the same settings (tomllib only
    reads TOML, so we write this small subset ourselves)."""
    lines: list[str] = []
    for section in SECTIONS:
        values = dataclasses.asdict(getattr(cfg, section))
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
        for key, tables in values.items():
            if isinstance(tables, dict):
                for name, settings in tables.items():
                    lines.append(f"[{section}.{key}.{json.dumps(name, ensure_ascii=False)}]")
                    lines += [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # floats round-trip; inf and nan are TOML too
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # its escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")  # pragma: no cover
