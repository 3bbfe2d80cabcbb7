"""The reference's learning-rate policy: linear warmup, then power-2 decay, floor 1e-7.

Step s counts from 1 (the reference's `_step_count`): iteration j trains with lr_at(j + 1).
Outside warmup and decay the reference repeats the last lr it computed (when decay is on),
so after warmup the lr stays at base * (W-1)/W until the decay starts; we keep that.
"""

from __future__ import annotations

MIN_LR = 1e-7


def _direct(base: float, step: int, warmup: int, decay_start: int, num_decay: int):
    if step < warmup:
        return base * (1.0 - (warmup - step) / warmup)
    if decay_start <= step < decay_start + num_decay:
        scale = ((num_decay - (step - decay_start)) / num_decay) ** 2
        return max(MIN_LR, base * scale)
    return None


def lr_at(base: float, step: int, warmup: int, decay_start: int, num_decay: int) -> float:
    """Learning rate at step (>= 1) for base lr `base`."""
    if decay_start < warmup:
        raise ValueError("Learning rate warmup must finish before the decay starts")
    lr = _direct(base, step, warmup, decay_start, num_decay)
    if lr is not None:
        return lr
    if num_decay == 0:
        return base
    # frozen at the last lr computed: end of decay, or end of warmup before the decay
    last = decay_start + num_decay - 1 if step >= decay_start + num_decay else warmup - 1
    if last >= 1:
        frozen = _direct(base, last, warmup, decay_start, num_decay)
        if frozen is not None:
            return frozen
    return base  # the reference has no lr to repeat here (it fails); base is its intent


class LRPolicy:
    """Sets every param group's lr for a step; one instance drives all optimizers."""

    def __init__(self, optimizer, warmup: int, decay_start: int, num_decay: int) -> None:
        if decay_start < warmup:
            raise ValueError("Learning rate warmup must finish before the decay starts")
        self.optimizer = optimizer
        self.args = (warmup, decay_start, num_decay)
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]

    def set_step(self, step: int) -> float:
        """Apply the lr of step (>= 1); returns the first group's lr."""
        lrs = [lr_at(base, step, *self.args) for base in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        return lrs[0]
