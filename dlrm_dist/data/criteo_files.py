"""The processed Criteo data as files: where a config's data lives, its format and settings
(meta.json), and what it says about the model's tables. (Writing it: `criteo`; reading its
batches: `criteo_data`.)"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dlrm_dist.config import DataConfig, ModelConfig, flag_name
from dlrm_dist.data.criteo_tsv import NUM_DENSE
from dlrm_dist.errors import ConfigError

FORMAT = 2  # 2: vocabulary ids in first-appearance order (1: sorted order)
DAYS = {"kaggle": 7, "terabyte": 24}  # per --data-set (the config's choices)
META = "meta.json"
ID_ORDER = "first-appearance"  # the vocabulary's ids: the reference's order
SETTINGS = "settings.json"


@dataclass(frozen=True)
class Settings:
    """What the processed data depends on; a rerun or a training run must match. Checked
    where they come from, as [data] settings (`DataConfig.check`); the names are meta.json's."""

    data_set: str = "kaggle"
    cat_encoding: str = "vocab"
    max_ind_range: int = -1
    sub_sample_rate: float = 0.0


def settings_of(cfg: DataConfig) -> Settings:
    return Settings(
        cfg.data_set, cfg.cat_encoding, max(cfg.max_ind_range, -1), cfg.data_sub_sample_rate
    )


def processed_dir(cfg: DataConfig) -> Path:
    """--processed-data-file, or `<raw-data-file without suffix>_processed` when empty."""
    if cfg.processed_data_file:
        return Path(cfg.processed_data_file)
    if not cfg.raw_data_file:
        raise ConfigError(
            "--data-generation=dataset needs --raw-data-file or --processed-data-file"
        )
    return Path(str(Path(cfg.raw_data_file).with_suffix("")) + "_processed")


def raw_files(data_set: str, raw_data_file: str) -> list[Path]:
    """Kaggle: the one file. Terabyte: `<raw>_0` ... `<raw>_23`, each plain or `.gz`."""
    if data_set == "kaggle":
        paths = [Path(raw_data_file)]
    else:
        paths = []
        for day in range(DAYS[data_set]):
            plain = Path(f"{raw_data_file}_{day}")
            gz = Path(f"{raw_data_file}_{day}.gz")
            paths.append(gz if not plain.exists() and gz.exists() else plain)
    return paths


def load_meta(directory: str | Path) -> dict[str, Any] | None:
    """The processed data's meta.json, or None if it is not complete."""
    path = Path(directory) / META
    if not path.exists():
        return None
    return json.loads(path.read_text())


def id_order(meta: dict[str, Any]) -> str:
    """How the processed data numbers each feature's values: `first-appearance` (vocab:
    the reference's order), `sorted` (vocab, written before format 2) or `hash`."""
    if meta.get("cat_encoding") == "hash":
        return "hash"
    return str(meta.get("id_order", "sorted"))


def stale_ids(meta: dict[str, Any]) -> bool:
    """Whether the data's ids are not the ones preprocessing writes now (the old sorted
    vocabulary order: other ids than the reference's, so never mixed with them)."""
    return id_order(meta) == "sorted"


def refuse_stale(directory: Path, why: str) -> ConfigError:
    return ConfigError(
        f"{directory} holds Criteo data preprocessed by an older dlrm_dist, with each feature's "
        "ids in sorted order (the reference numbers them in order of first appearance, so the "
        f"ids and losses differ): {why}"
    )


def _flag(key: str) -> str:
    """The flag of a Settings field: the [data] setting of that name (sub_sample_rate's is
    data_sub_sample_rate)."""
    return flag_name("data", "data_sub_sample_rate" if key == "sub_sample_rate" else key)


def check_settings(found: dict[str, Any], want: Settings, directory: Path) -> None:
    diff = [
        f"--{_flag(key)}={found.get(key)} (not {value})"
        for key, value in asdict(want).items()
        if found.get(key) != value
    ]
    if diff:
        raise ConfigError(
            f"{directory} holds data preprocessed with {', '.join(diff)}: use those settings, "
            "or another --processed-data-file"
        )


def table_sizes(counts: list[int], given: list[int]) -> list[int]:
    """Rows per table for the model: the data's counts. --arch-embedding-size left at its
    default is ignored (the reference ignores it with a data set); given, it must match."""
    counts = [int(c) for c in counts]
    if min(counts, default=0) < 1:
        raise ConfigError("the processed data has an empty table (no rows): preprocess more data")
    if list(given) not in (ModelConfig().embedding_sizes, counts):
        raise ConfigError(
            f"--arch-embedding-size={'-'.join(map(str, given))} does not match the data's "
            f"{len(counts)} tables ({'-'.join(map(str, counts))}): leave it out with "
            "--data-generation=dataset (the data sets the tables' rows)"
        )
    return counts


def dense_features(given: int) -> int:
    """Criteo has 13 dense features; --arch-dense-feature-size, when given, must say so."""
    if given not in (0, NUM_DENSE):
        raise ConfigError(
            f"--arch-dense-feature-size={given}: Criteo has {NUM_DENSE} dense features"
        )
    return NUM_DENSE
