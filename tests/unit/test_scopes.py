"""Profiler scopes skip their dispatcher calls while no profiler runs, and are all
recorded while one does (dlrm_dist.scopes)."""

from __future__ import annotations

import torch
from torch.autograd.profiler import record_function

from dlrm_dist import scopes


def _names_recorded(fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()]


def test_without_a_profiler_a_scope_makes_no_record_and_exits_cleanly():
    scopes.install()
    scope = record_function("## unseen ##")
    with scope:
        x = torch.ones(2) + 1
    assert scope.record is None and torch.equal(x, torch.full((2,), 2.0))
    fut = torch.futures.Future()
    assert record_function("## f ##").__enter__()._call_end_callbacks_on_future(fut) is fut


def test_under_a_profiler_every_scope_and_the_optimizers_are_recorded():
    scopes.install()
    assert record_function.__enter__ is scopes._enter
    layer = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)

    def step():
        with record_function("## outer ##"):
            with record_function("## inner ##"):
                layer(torch.ones(4, 3)).sum().backward()
        opt.step()

    names = _names_recorded(step)
    assert {"## outer ##", "## inner ##", "Optimizer.step#SGD.step"} <= set(names)
    fut = torch.futures.Future()

    def on_future():
        with record_function("## async ##") as scope:
            waited = scope._call_end_callbacks_on_future(fut)
        fut.set_result(1)
        assert waited.wait() == 1

    assert "## async ##" in _names_recorded(on_future)


def test_a_scope_entered_before_the_profiler_starts_exits_without_error():
    scopes.install()
    scope = record_function("## early ##")
    scope.__enter__()
    names = _names_recorded(lambda: scope.__exit__(None, None, None))
    assert "## early ##" not in names
