"""The reference's initial weights, drawn from its seeded numpy stream (QR tables and MD
projections: from torch's) in its order."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from dlrm_dist.arch import (
    ROW_WEIGHT_DIM,
    Arch,
    dense_parameter_names,
    parameter_order,
    projection_parameter,
    row_weight_parameter,
    sharded_row_weights,
    table_parameter,
    table_specs,
)


def reference_init(
    rs: np.random.RandomState, arch: Arch, seed: int | None = None, tables: bool = True
) -> dict[str, np.ndarray]:
    """Tables uniform(+-sqrt(1/n)) (n, dim) in table order (an MD table too, at its own
    dim), then bottom then top MLP: weight normal(0, sqrt(2/(m+n))) (m, n), bias
    normal(0, sqrt(1/m)) (m,); float32.

    QR tables and MD projections the reference draws from torch's stream instead (see
    `torch_stream_weights`; `seed` is the one it passes to torch.manual_seed),
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
    out.update(zip(dense_parameter_names(arch), values, strict=True))
    return {name: out[name] for name in parameter_order(arch) if name in out}


def uses_torch_stream(arch: Arch) -> bool:
    """Whether the reference draws some of these initial weights from torch's stream."""
    return any(arch.qr_tables) or any(d < arch.m_spa for d in arch.emb_dims)


def torch_stream_weights(seed: int, arch: Arch) -> dict[str, torch.Tensor]:
    """The initial weights the reference draws from torch's generator (seeded, as it
    does, with the seed), by replaying its module construction in table order:

    - plain table: nn.EmbeddingBag(n, m) draws normal_ (n, m) (then overwritten);
    - QR table: weight_q (ceil(n/c), m) then weight_r (c, m), each uniform_(sqrt(1/n), 1)
      (its reset_parameters passes sqrt(1/n) as the lower bound; n = the full rows);
    - MD table (dim d): nn.EmbeddingBag(n, d) normal_, xavier_uniform_ of it (both then
      overwritten from numpy); if d < D, nn.Linear(d, D, bias=False)'s kaiming_uniform_,
      then xavier_uniform_ (D, d): the projection kept.

    Keyed by parameter name; replay stops after the last weight kept.
    """
    g = torch.Generator().manual_seed(seed)
    specs = table_specs(arch)
    keep_until = max(
        (i for i, s in enumerate(specs) if arch.qr_tables[s.source] or s.dim < arch.m_spa),
        default=-1,
    )
    out: dict[str, torch.Tensor] = {}
    for s in specs[: keep_until + 1]:
        n = arch.ln_emb[s.source]
        if arch.qr_tables[s.source]:
            w = torch.empty(s.rows, s.dim)
            nn.init.uniform_(w, math.sqrt(1 / n), 1.0, generator=g)
            out[table_parameter(arch, s)] = w
            continue
        w = torch.empty(n, s.dim)
        nn.init.normal_(w, generator=g)
        if arch.md_tables[s.source]:
            nn.init.xavier_uniform_(w, generator=g)
            if s.dim < arch.m_spa:
                p = torch.empty(arch.m_spa, s.dim)
                nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=g)
                nn.init.xavier_uniform_(p, generator=g)
                out[projection_parameter(s)] = p
    return out
