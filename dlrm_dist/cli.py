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
    choices,
    field_docs,
    flag_name,
    load_toml,
    settings,
    validate,
)
from dlrm_dist.errors import ConfigError

# flag -> (section, key), read off the fields (their `flag`); [sharding] tables is TOML only.
FLAGS: dict[str, tuple[str, str]] = {
    flag_name(section, f.name): (section, f.name) for section, f in settings(command_line=True)
}
# The reference's names for settings that have a flag of our own (shown in --help).
ALIASES = {
    alias: flag_name(section, f.name)
    for section, f in settings()
    for alias in f.metadata["aliases"]
}
# Reference switches (no value) that set one of our settings to a value: (flag, value, help).
SWITCHES: dict[str, tuple[str, Any, str]] = {
    switch: (flag_name(section, f.name), value, help_)
    for section, f in settings()
    if f.metadata["switch"]
    for switch, value, help_ in [f.metadata["switch"]]
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
        doc = field_docs(section)[key].replace("%", "%%")  # argparse formats help with %
        shown = "-".join(map(str, default)) if isinstance(default, list) else default
        kwargs: dict[str, Any] = {"dest": f"{section}.{key}", "help": f"{doc} [{shown}]"}
        if isinstance(default, bool):
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        if allowed := choices(section, key):  # shown, not argparse's choices: ours say more
            kwargs["metavar"] = "{" + ",".join(str(c) if c != "" else '""' for c in allowed) + "}"
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
