"""`python -m dlrm_dist.plan`: the sharding plan and per-rank memory for a cluster you describe.

Runs the trainer's planning path (dlrm_dist.planning) for a world size, device and memory
given on the command line: no process group, no GPU, tables stay on `meta`. Takes the
trainer's flags and config files as well, so the plan shown is the one `dlrm_dist.train`
would use with the same arguments on that cluster.

    python -m dlrm_dist.plan --config configs/mlperf_dcnv2.toml --world-size 64 \
        --device cuda --hbm-gb 141
"""

from __future__ import annotations

import argparse
import sys

from dlrm_dist import cli
from dlrm_dist.config import Config
from dlrm_dist.errors import ConfigError, DlrmDistError


def _add_plan_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the cluster to plan for (its memory: --hbm-gb, --ddr-gb)")
    group.add_argument("--world-size", type=int, default=1, help="ranks in all [1]")
    group.add_argument(
        "--local-world-size",
        type=int,
        default=0,
        help="ranks per host; 0 = min(8, world size) on cuda, the world size on cpu [0]",
    )
    group.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="compute device of every rank [cuda with --use-gpu, else cpu]",
    )
    group.add_argument(
        "--batch-size-per-rank",
        type=int,
        default=0,
        help="samples per rank per step; 0 = --mini-batch-size / world size [0]",
    )


def build_parser() -> argparse.ArgumentParser:
    """The trainer's parser plus the cluster flags, for --help."""
    parser = cli.build_parser()
    parser.prog = "python -m dlrm_dist.plan"
    parser.description = (
        "Print the embedding sharding plan and the memory per rank for a cluster, "
        "without one. Takes every dlrm_dist.train flag too."
    )
    _add_plan_flags(parser)
    return parser


def parse(argv: list[str]) -> tuple[argparse.Namespace, Config]:
    """argv -> (the cluster flags with device and local world size resolved, the trainer's
    config); raises ConfigError."""
    own = cli.RaisingParser(add_help=False, allow_abbrev=False)
    _add_plan_flags(own)
    ns, rest = own.parse_known_args(argv)
    if ns.world_size < 1 or ns.local_world_size < 0 or ns.batch_size_per_rank < 0:
        raise ConfigError(
            "--world-size must be at least 1; --local-world-size and "
            "--batch-size-per-rank must not be negative (0 = derive)"
        )
    cfg = cli.parse_args(rest)
    ns.device = ns.device or ("cuda" if cfg.train.use_gpu else "cpu")
    world = ns.world_size
    ns.local_world_size = ns.local_world_size or (min(8, world) if ns.device == "cuda" else world)
    if world % ns.local_world_size:
        raise ConfigError(
            f"--world-size {world} is not a multiple of --local-world-size {ns.local_world_size}"
        )
    return ns, cfg


def plan_text(ns: argparse.Namespace, cfg: Config) -> str:
    """The printed plan; raises ConfigError."""
    from dlrm_dist import plan_report, planning  # torch, torchrec: once the arguments are good
    from dlrm_dist.arch import derive_arch
    from dlrm_dist.model import DLRM

    model = DLRM(derive_arch(cfg.model, cfg.data.dense_features), cfg.model, device="meta")
    result = planning.plan_for_config(
        model,
        cfg,
        ns.world_size,
        ns.device,
        ns.local_world_size,
        batch_size_per_rank=ns.batch_size_per_rank,
    )
    return plan_report.describe_plan(result)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        build_parser().print_help()
        return 0
    try:
        ns, cfg = parse(argv)
        from dlrm_dist.console import quiet_libraries

        quiet_libraries()
        print(plan_text(ns, cfg))
    except DlrmDistError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
