"""torch's `record_function` scopes, free while no profiler listens.

TorchRec's sharded modules and torch's optimizers open a named scope around each stage
(`## input_dist ##`, `Optimizer.step#SGD.step`, ...): 18 a step at config B. Each
costs a dispatcher call on entry and one on exit, ~6 us together, even with no profiler
running to record it (~0.1 ms of B's ~1.7 ms step). `install()` makes a scope entered
while no profiler is on (`torch.autograd._profiler_enabled()`) skip both calls; under a
profiler (`--enable-profiling`, or the user's own `torch.profiler.profile`) every scope is
recorded as before (tested). A scope entered before a profiler starts is not recorded.
"""

from __future__ import annotations

import torch
from torch.autograd import profiler

_original_enter = profiler.record_function.__enter__
_original_on_future = profiler.record_function._call_end_callbacks_on_future


def _enter(self):
    if torch.autograd._profiler_enabled():
        return _original_enter(self)
    self.run_callbacks_on_exit = False  # torch's __exit__ then ends nothing
    return self


def _on_future(self, fut):
    if self.record is None and not self.run_callbacks_on_exit:  # skipped: nothing to end
        return fut
    return _original_on_future(self, fut)


def install() -> None:
    """Idempotent; for the whole process (every rank calls it at start-up)."""
    profiler.record_function.__enter__ = _enter
    profiler.record_function._call_end_callbacks_on_future = _on_future
