"""The reference's initial weights, drawn from its seeded numpy stream in its order."""

from __future__ import annotations

import numpy as np

from dlrm_dist.embeddings import (
    ROW_WEIGHT_DIM,
    row_weight_parameter,
    sharded_row_weights,
    table_parameter,
    table_specs,
    torch_stream_weights,
    uses_torch_stream,
)
from dlrm_dist.model import Arch, parameter_order


def reference_init(
    rs: np.random.RandomState, arch: Arch, seed: int | None = None, tables: bool = True
) -> dict[str, np.ndarray]:
    """Tables uniform(+-sqrt(1/n)) (n, dim) in table order (an MD table too, at its own
        dim), then bottom then top MLP: weight normal(0, sqrt(2/(m+n))) (m, n), bias
        normal(0, sqrt(1/m)) (m,); float32.

        QR tables and MD projections the reference draws from torch's stream instead (see
        `embeddings.torch_stream_weights`; `seed` is the one it passes to torch.manual_seed),
        and they take nothing from rs. Learned pooling weights start at ones (sharded: every
    column of their rows x 4 weight table).

        DCN v2 layers, which the reference lacks, follow from the same stream: every W
        (N, r), then every V (r, N), normal(0, sqrt(2/(N+r))) (xavier normal, as torchrec),
        then the biases, zero.

        Returned in `parameter_order(arch)`, keyed by our parameter names. tables=False
        (`--weight-init=sharded`, plain tables only): no table is drawn or returned, the MLPs
        then take the stream's first draws.
    """
    if uses_torch_stream(arch) and seed is None:
        raise ValueError("QR tables and MD projections need the seed of torch's stream")
    drawn = torch_stream_weights(seed, arch) if uses_torch_stream(arch) else {}
    out = {name: value.numpy() for name, value in drawn.items()}
    for t in table_specs(arch) if tables else []:
        name = table_parameter(arch, t)
        if name not in out:
            bound = np.sqrt(1 / t.rows)
            out[name] = rs.uniform(low=-bound, high=bound, size=(t.rows, t.dim)).astype(np.float32)
        if arch.weighted_pooling == "learned":
            shape = (t.rows, ROW_WEIGHT_DIM) if sharded_row_weights(arch) else (t.rows,)
            out[row_weight_parameter(arch, t)] = np.ones(shape, dtype=np.float32)
    values: list[np.ndarray] = []
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
    names = parameter_order(arch)
    dense = [name for name in names if not name.startswith("sparse_arch.")]
    out.update(zip(dense, values, strict=True))
    return {name: out[name] for name in names if name in out}
