"""The supported version range: the tested stacks lie inside what pyproject.toml declares,
and each shim of dlrm_dist/compat.py does its job on either end of it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from types import SimpleNamespace

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from dlrm_dist import compat

ROOT = Path(__file__).resolve().parents[1]
META = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _declared(name: str) -> SpecifierSet:
    project = META["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values()
                                      for r in extra]  # fmt: skip
    (spec,) = {str(r.specifier) for r in map(Requirement, reqs) if r.name == name}
    return SpecifierSet(spec)


def test_every_tested_stack_lies_inside_the_declared_ranges():
    stacks = META["tool"]["dlrm_dist"]["stacks"]
    assert set(stacks) == {"newest", "oldest"}
    python = SpecifierSet(META["project"]["requires-python"])
    for name, stack in stacks.items():
        assert f"{stack['python']}.0" in python, name
        assert stack["torch"] in _declared("torch"), name
        assert stack["fbgemm"] in _declared("fbgemm-gpu-cpu"), name
        assert stack["fbgemm"] in _declared("fbgemm-gpu"), name
        assert "tensordict" not in stack or stack["tensordict"] in _declared("tensordict")
    # the range's two ends are the two stacks
    assert (stacks["oldest"]["torch"], stacks["newest"]["torch"]) == ("2.11.0", "2.14.1")
    assert (stacks["oldest"]["torchrec"], stacks["newest"]["torchrec"]) == ("1.6.1", "1.9.2")
    assert "3.12.0" in python and "3.13.0" not in python


def test_planner_shims_use_the_api_where_it_exists_and_the_old_state_where_not():
    class New:
        def get_selected_options(self):
            return ["chosen"]

        def get_search_space(self):
            return ["a", "b"]

    calls = []

    def enumerate_options(module, sharders):
        calls.append((module, sharders))
        return ["again"]

    old = SimpleNamespace(
        _best_plan=["best"], _enumerator=SimpleNamespace(enumerate=enumerate_options)
    )
    assert compat.selected_options(New()) == ["chosen"]
    assert compat.search_space(New(), "model", ["sharder"]) == ["a", "b"]
    assert compat.selected_options(old) == ["best"]
    assert compat.search_space(old, "model", ["sharder"]) == ["again"]
    assert calls == [("model", ["sharder"])]
    assert compat.selected_options(SimpleNamespace(_best_plan=None)) == []


def _run(code: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": f"{path}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )


def test_fbgemm_import_noise_is_dropped_and_the_root_logger_left_alone(tmp_path):
    # a stand-in fbgemm_gpu that logs as fbgemm-gpu 1.6.0's import does, plus one real warning
    (tmp_path / "fbgemm_gpu").mkdir()
    (tmp_path / "fbgemm_gpu" / "__init__.py").write_text(
        textwrap.dedent(
            """
            import logging
            logging.warning("_fbgemm_torch_compat_table has no entry for 1.6.0 of FBGEMM")
            logging.warning("FBGEMM_GPU version is 1.6.0, which is not guaranteed to be ok")
            logging.warning("a warning that matters")
            """
        )
    )
    code = """
        import logging
        import dlrm_dist, fbgemm_gpu
        assert fbgemm_gpu.__file__.startswith(%r)
        print("handlers", len(logging.getLogger().handlers))
    """
    proc = _run(code % str(tmp_path), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "handlers 0"
    assert proc.stderr.strip() == "a warning that matters"
    # without dlrm_dist first, the noise and a root handler (what the shim prevents)
    bare = _run(code.replace("import dlrm_dist, ", "import ") % str(tmp_path), tmp_path)
    assert "has no entry" in bare.stderr and bare.stdout.strip() == "handlers 1"


def test_the_installed_stack_imports_silently():
    proc = _run(
        """
        import logging
        import dlrm_dist.train, torchrec, fbgemm_gpu
        print("handlers", len(logging.getLogger().handlers))
        """,
        ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "handlers 0" and proc.stderr == ""
