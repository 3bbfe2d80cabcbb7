"""What differs across the supported stack, in one place.

Supported: torch 2.11-2.14, torchrec 1.6.1-1.9.2, fbgemm-gpu(-cpu) 1.6.0-1.9.0, Python
3.11-3.12 (pyproject.toml's [tool.dlrm_dist.stacks] lists the two ends the suite runs on).
The rest of the project calls these functions instead of checking versions. Each shim says
what it is for and when it can go: when the oldest supported version has what it stands in
for, raise that floor in pyproject.toml and delete the shim.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from typing import Any

# fbgemm-gpu < 1.7 (its import-time version table stops before the torch it runs on)
_FBGEMM_COMPAT_NOISE = ("_fbgemm_torch_compat_table has no entry", "not guaranteed to be")


class _DropFbgemmCompatNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not any(noise in text for noise in _FBGEMM_COMPAT_NOISE)


class _QuietFbgemmImport(importlib.abc.MetaPathFinder):
    """fbgemm-gpu 1.6's import logs one root WARNING per library ("... has no entry for
    1.6.0 of FBGEMM; cannot determine compatibility with PyTorch 2.11"): its version table
    stops at 1.5. Through the root logger's `logging.warning`, that also installs a stderr
    handler on the root logger (logging.basicConfig), which prints every later root record
    and turns our own basicConfig calls into no-ops. While `fbgemm_gpu` runs its import,
    those two records are dropped and the root logger gets no handler it did not have;
    any other record of the import still reaches stderr (logging's last resort).
    Can go when the oldest supported fbgemm-gpu is 1.7 or newer (its table knows its torch).
    """

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "fbgemm_gpu":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec(module: Any) -> None:
            root, drop = logging.getLogger(), _DropFbgemmCompatNoise()
            stand_in = None if root.handlers else logging.lastResort
            root.addFilter(drop)
            if stand_in is not None:  # so logging.warning() sees a handler: no basicConfig
                root.addHandler(stand_in)
            try:
                exec_module(module)
            finally:
                root.removeFilter(drop)
                if stand_in is not None:
                    root.removeHandler(stand_in)

        spec.loader.exec_module = quiet_exec  # type: ignore[method-assign]
        return spec


def install_import_hooks() -> None:
    """Called once when dlrm_dist is imported (its __init__), before anything imports
    torchrec or fbgemm_gpu; a no-op when fbgemm_gpu is already imported."""
    if "fbgemm_gpu" in sys.modules or any(isinstance(f, _QuietFbgemmImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietFbgemmImport())


def selected_options(planner: Any) -> list[Any]:
    """The ShardingOptions of the planner's last successful plan().
    torchrec < 1.9 has no get_selected_options(); it keeps them in `_best_plan`.
    Can go when the oldest supported torchrec is 1.9."""
    if hasattr(planner, "get_selected_options"):
        return planner.get_selected_options()
    return list(planner._best_plan or [])


def search_space(planner: Any, module: Any, sharders: list[Any]) -> list[Any]:
    """Every ShardingOption the planner considered (with storage estimates), after a
    plan() that failed: what the one-line fit error is computed from.
    torchrec < 1.9 keeps no search space; enumerating again gives the same one (the
    enumerator is deterministic and plan() enumerated with the same arguments).
    Can go when the oldest supported torchrec is 1.9."""
    if hasattr(planner, "get_search_space"):
        return planner.get_search_space() or []
    return planner._enumerator.enumerate(module=module, sharders=sharders) or []


def skip_data_parallel_grad_sync(module: Any) -> bool:
    """Mark the unsharded collection `module` so that its data-parallel tables' lookups are
    not wrapped in DDP when sharded (one rank: nothing to all-reduce; the wrap cost ~0.4
    ms a step of config C on CPU). Whether this torchrec can: torchrec < 1.9 has no marker
    and keeps the wrap (the same numbers, the cost stays). Can go when the oldest
    supported torchrec is 1.9."""
    from torchrec.modules import embedding_modules

    mark = getattr(embedding_modules, "mark_data_parallel_skip_grad_sync", None)
    if mark is None:
        return False
    mark(module)
    return True
