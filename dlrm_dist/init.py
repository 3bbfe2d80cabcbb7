"""The reference's initial weights, drawn from its seeded numpy stream in its order."""

from __future__ import annotations

import numpy as np

from dlrm_dist.model import Arch, parameter_order


def reference_init(rs: np.random.RandomState, arch: Arch) -> dict[str, np.ndarray]:
    """Tables uniform(+-sqrt(1/n)) (n, D) in table order, then bottom then top MLP:
    weight normal(0, sqrt(2/(m+n))) (m, n), bias normal(0, sqrt(1/m)) (m,); float32.

    DCN v2 layers, which the reference lacks, follow from the same stream: every W
    (N, r), then every V (r, N), normal(0, sqrt(2/(N+r))) (xavier normal, as torchrec),
    then the biases, zero.

    Returned in `parameter_order(arch)`, keyed by our parameter names.
    """
    values: list[np.ndarray] = []
    for n in arch.ln_emb:
        bound = np.sqrt(1 / n)
        values.append(rs.uniform(low=-bound, high=bound, size=(n, arch.m_spa)).astype(np.float32))
    for widths in (arch.ln_bot, arch.ln_top):
        for n, m in zip(widths[:-1], widths[1:]):
            values.append(rs.normal(0.0, np.sqrt(2 / (m + n)), size=(m, n)).astype(np.float32))
            values.append(rs.normal(0.0, np.sqrt(1 / m), size=m).astype(np.float32))
    n, r = arch.num_int, arch.dcn_low_rank_dim
    std = np.sqrt(2 / (n + r)) if r else 0.0
    for shape in ((n, r), (r, n)):
        for _ in range(arch.dcn_num_layers):
            values.append(rs.normal(0.0, std, size=shape).astype(np.float32))
    values += [np.zeros(n, dtype=np.float32) for _ in range(arch.dcn_num_layers)]
    return dict(zip(parameter_order(arch), values, strict=True))
