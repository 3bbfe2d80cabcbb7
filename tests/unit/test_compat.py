"""The supported version range: the tested stacks lie inside what pyproject.toml declares;
the planner shims of dlrm_dist/compat.py on either end of it."""

from __future__ import annotations

import tomllib
from types import SimpleNamespace

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from dlrm_dist import compat
from tests.common import ROOT

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
