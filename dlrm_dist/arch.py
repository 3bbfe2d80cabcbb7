"""The model's shape, derived from the config: layer widths, tables and parameter names.

Pure arithmetic at the bottom of the import graph: data, model, initial weights,
distribution and checkpoints all read it, and it builds no modules. Shapes: F sparse
features (= input tables), D embedding dim (= last bottom-MLP width).

The parameter names are those of `model.DLRM` (its attributes `sparse_arch`, `bot_l`,
`interaction`, `top_l`); they are the keys of initial weights, full weights and
checkpoints, so code asks these functions for them instead of parsing names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dlrm_dist.config import ModelConfig
from dlrm_dist.errors import ConfigError

ROW_WEIGHT_DIM = 4  # a sharded weight table's width; the weight is column 0


@dataclass(frozen=True)
class Arch:
    """The derived layer sizes, named as in the reference's `model arch:` print."""

    m_spa: int  # embedding dim of a table (D; QR concat: D / 2)
    m_den: int  # dense features per sample
    ln_emb: tuple[int, ...]  # rows per table
    ln_bot: tuple[int, ...]  # bottom MLP widths
    ln_top: tuple[int, ...]  # top MLP widths, interaction width first
    num_fea: int  # F + 1: sparse features plus the dense one
    num_int: int  # interaction output width
    dcn_num_layers: int = 0  # dcn: cross layers
    dcn_low_rank_dim: int = 0  # dcn: rank r of each layer's W (N x r) V (r x N)
    emb_dims: tuple[int, ...] = ()  # per table: its dim (m_spa; MD: its md_solver dim)
    qr_tables: tuple[bool, ...] = ()  # per table: split into quotient and remainder (QR)
    qr_collisions: int = 0  # QR: c, remainder rows
    qr_operation: str = ""  # QR: concat | add | mult
    md_tables: tuple[bool, ...] = ()  # per table: a mixed-dimension table (MD)
    weighted_pooling: str = ""  # "" | fixed | learned


def feature_names(num_tables: int) -> list[str]:
    """The F sparse features' KJT keys, one per input table."""
    return [f"cat_{i}" for i in range(num_tables)]


# --- derivation ---------------------------------------------------------------------------
def derive_arch(cfg: ModelConfig, dense_features: int = 0) -> Arch:
    """Sizes as the reference derives them; raise ConfigError with its wording if they clash."""
    ln_bot = tuple(cfg.mlp_bot)
    m_den = dense_features or ln_bot[0]
    m_spa = cfg.sparse_feature_size
    ln_emb = tuple(cfg.embedding_sizes)
    num_fea = len(ln_emb) + 1
    _check_widths(cfg, m_den, ln_bot)
    qr_tables = _qr_tables(cfg, ln_emb)
    md_tables = tuple(cfg.md_flag and n > cfg.md_threshold for n in ln_emb)
    num_int = _interaction_width(cfg, num_fea, ln_bot[-1])
    dcn = cfg.interaction == "dcn"
    return Arch(
        m_spa=m_spa,
        m_den=m_den,
        ln_emb=ln_emb,
        ln_bot=ln_bot,
        ln_top=(num_int, *cfg.mlp_top),
        num_fea=num_fea,
        num_int=num_int,
        dcn_num_layers=cfg.dcn_num_layers if dcn else 0,
        dcn_low_rank_dim=cfg.dcn_low_rank_dim if dcn else 0,
        emb_dims=_emb_dims(cfg, ln_emb, md_tables),
        qr_tables=qr_tables,
        qr_collisions=cfg.qr_collisions if cfg.qr_flag else 0,
        qr_operation=cfg.qr_operation if cfg.qr_flag else "",
        md_tables=md_tables,
        weighted_pooling=cfg.weighted_pooling,
    )


def _check_widths(cfg: ModelConfig, m_den: int, ln_bot: tuple[int, ...]) -> None:
    """The bottom MLP reads the dense features and ends as wide as a table's vector."""
    m_spa, m_den_out = cfg.sparse_feature_size, ln_bot[-1]
    if m_den != ln_bot[0]:
        raise ConfigError(
            f"arch-dense-feature-size {m_den} does not match first dim of bottom mlp {ln_bot[0]}"
        )
    concat = cfg.qr_flag and cfg.qr_operation == "concat"
    if concat and 2 * m_spa != m_den_out:
        raise ConfigError(
            f"2 arch-sparse-feature-size {2 * m_spa} does not match last dim of bottom mlp "
            f"{m_den_out} (note that the last dim of bottom mlp must be 2x the embedding dim)"
        )
    if not concat and m_spa != m_den_out:
        raise ConfigError(
            f"arch-sparse-feature-size {m_spa} does not match last dim of bottom mlp {m_den_out}"
        )


def _qr_tables(cfg: ModelConfig, ln_emb: tuple[int, ...]) -> tuple[bool, ...]:
    """Per table: whether it splits into quotient and remainder (QR)."""
    qr_tables = tuple(cfg.qr_flag and n > cfg.qr_threshold for n in ln_emb)
    if cfg.qr_flag and cfg.qr_operation == "concat" and not all(qr_tables):
        m_spa = cfg.sparse_feature_size
        small = [f"t_{f}" for f, qr in zip(feature_names(len(ln_emb)), qr_tables) if not qr]
        raise ConfigError(
            f"--qr-operation=concat makes every table 2 x {m_spa} wide, but {', '.join(small)} "
            f"have at most --qr-threshold={cfg.qr_threshold} rows and stay {m_spa} wide: "
            "lower --qr-threshold below the smallest table or use add | mult"
        )
    return qr_tables


def _emb_dims(
    cfg: ModelConfig, ln_emb: tuple[int, ...], md_tables: tuple[bool, ...]
) -> tuple[int, ...]:
    """Per table: its dim, the sparse feature size or (MD) its md_solver dim."""
    m_spa = cfg.sparse_feature_size
    if not cfg.md_flag:
        return (m_spa,) * len(ln_emb)
    dims = md_solver(ln_emb, cfg.md_temperature, m_spa, cfg.md_round_dims)
    if max(dims) != m_spa:
        raise ConfigError(
            f"--md-round-dims makes the widest table {max(dims)} wide, not "
            f"--arch-sparse-feature-size={m_spa}: use a power of 2 for it"
        )
    return tuple(d if md else m_spa for d, md in zip(dims, md_tables))


def _interaction_width(cfg: ModelConfig, num_fea: int, d: int) -> int:
    """dot: the D-wide dense vector plus one per pair (with itself: and per feature);
    cat, dcn: the (F + 1) vectors side by side."""
    if cfg.interaction == "dot":
        pairs = num_fea * (num_fea + 1) if cfg.interaction_itself else num_fea * (num_fea - 1)
        return pairs // 2 + d
    return num_fea * d


def md_solver(rows: Sequence[int], temperature: float, d0: int, round_dims: bool) -> list[int]:
    """The reference's mixed dimensions (md_solver with d0, alpha_power_rule, pow_2_round).

    With the tables sorted by rows (n_0 the fewest), d_i = d0 (n_0 / n_i)^alpha, computed
    in float32 as lambda n_i^-alpha with lambda = d0 n_0^alpha; the smallest table gets
    d0 exactly, the others at least 1; rounded half to even. round_dims: then to the
    nearest power of 2 (2^round(log2 d)). Returned in the tables' own order.
    In torch, as the reference, so the float32 rounding is its own (imported here: the
    rest of this module is plain Python).
    """
    import torch

    n = torch.tensor(list(rows), dtype=torch.int64)
    n_sorted, order = torch.sort(n)
    lamb = d0 * (n_sorted[0].type(torch.float) ** temperature)
    d = torch.ones(len(n_sorted)) * lamb * (n_sorted.type(torch.float) ** (-temperature))
    d[0] = d0
    d[1:] = torch.where(d[1:] < 1, torch.ones_like(d[1:]), d[1:])
    dims = torch.round(d).type(torch.long)
    if round_dims:
        dims = (2 ** torch.round(torch.log2(dims.type(torch.float)))).type(torch.long)
    out = torch.empty_like(dims)
    out[order] = dims
    return out.tolist()


# --- tables -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableSpec:
    """One EBC table: its name, the KJT key it reads, rows x dim, and the input
    feature (index into the F features) it serves."""

    name: str
    feature: str
    rows: int
    dim: int
    source: int


def table_specs(arch: Arch) -> list[TableSpec]:
    """The EBC's tables in the reference's parameter order: per input feature its one
    table, or (QR) its quotient then its remainder table."""
    out: list[TableSpec] = []
    for i, (feature, rows) in enumerate(zip(feature_names(len(arch.ln_emb)), arch.ln_emb)):
        if arch.qr_tables[i]:
            c = arch.qr_collisions
            out.append(TableSpec(f"t_{feature}_q", f"{feature}_q", -(-rows // c), arch.m_spa, i))
            out.append(TableSpec(f"t_{feature}_r", f"{feature}_r", c, arch.m_spa, i))
        else:
            out.append(TableSpec(f"t_{feature}", feature, rows, arch.emb_dims[i], i))
    return out


def sharded_row_weights(arch: Arch) -> bool:
    """Whether learned pooling weights live in sharded weight tables (SequencePoolingArch)
    rather than in replicated dense parameters: when every table can shard, that is
    has a dim divisible by 4 (QR and MD do not combine with weighted pooling)."""
    return arch.weighted_pooling == "learned" and all(d % 4 == 0 for d in arch.emb_dims)


def row_weight_table(spec: TableSpec) -> str:
    """The weight table of a table t_<feature>: w_<feature>."""
    return f"w_{spec.feature}"


# --- parameter names ----------------------------------------------------------------------
def table_parameter(arch: Arch, spec: TableSpec) -> str:
    """The full parameter name of a table's rows in our DLRM."""
    if sharded_row_weights(arch):
        return f"sparse_arch.embedding_collection.embeddings.{spec.name}.weight"
    return f"sparse_arch.embedding_bag_collection.embedding_bags.{spec.name}.weight"


def projection_parameter(spec: TableSpec) -> str:
    """The full parameter name of an MD table's projection (D, d)."""
    return f"sparse_arch.proj.{spec.name}.weight"


def row_weight_parameter(arch: Arch, spec: TableSpec) -> str:
    """The full parameter name of a table's learned pooling weights: (rows,) replicated,
    or (rows, 4) sharded with the weights in column 0."""
    if sharded_row_weights(arch):
        return f"sparse_arch.row_weight_collection.embeddings.{row_weight_table(spec)}.weight"
    return f"sparse_arch.pooling_weights.{spec.name}"


def table_parameter_names(arch: Arch) -> list[str]:
    """The tables' rows, in table order (no projections, no pooling weights)."""
    return [table_parameter(arch, t) for t in table_specs(arch)]


def sparse_parameter_names(arch: Arch) -> list[str]:
    """The embedding side's parameters in the reference's order: per table its rows and
    (MD) its projection, then (learned) the pooling weights, as the reference's v_W_l."""
    names = []
    for t in table_specs(arch):  # a QR table's quotient, remainder; an MD table's projection
        names.append(table_parameter(arch, t))
        if t.dim < arch.m_spa:  # MD: projected to D
            names.append(projection_parameter(t))
    if arch.weighted_pooling == "learned":
        names += [row_weight_parameter(arch, t) for t in table_specs(arch)]
    return names


def dense_parameter_names(arch: Arch) -> list[str]:
    """The MLPs' weight, bias per layer (bottom, then top), then the DCN cross layers
    (every W, every V, every bias), which the reference lacks."""
    names = []
    for prefix, widths in (("bot_l", arch.ln_bot), ("top_l", arch.ln_top)):
        for i in range(len(widths) - 1):
            names += [f"{prefix}.{2 * i}.weight", f"{prefix}.{2 * i}.bias"]
    for kind in ("W_kernels", "V_kernels", "bias"):
        names += [f"interaction.dcn.crossnet.{kind}.{i}" for i in range(arch.dcn_num_layers)]
    return names


def parameter_order(arch: Arch) -> list[str]:
    """Our parameter names in the reference's `dlrm.parameters()` order."""
    return sparse_parameter_names(arch) + dense_parameter_names(arch)
