"""DLRM with the reference's architecture, over a TorchRec EmbeddingBagCollection.

Shapes: B batch, F sparse features (= tables), D embedding dim (= last bottom-MLP width).
The embedding side is torchrec's `SparseArch`; the dense side is ours because the
reference differs from torchrec's DLRM arches: a sigmoid on the last top layer, a
lower-triangle interaction order (torchrec takes the upper one), and optional
self-interaction. This module knows nothing about process groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec.models.dlrm import InteractionDCNArch
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from dlrm_dist.config import ModelConfig
from dlrm_dist.data.reference_random import feature_names
from dlrm_dist.embeddings import (
    EmbeddingArch,
    SequencePoolingArch,
    md_solver,
    row_weight_parameter,
    sharded_row_weights,
    table_parameter,
    table_specs,
)
from dlrm_dist.errors import ConfigError


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


def derive_arch(cfg: ModelConfig, dense_features: int = 0) -> Arch:
    """Sizes as the reference derives them; raise ConfigError with its wording if they clash."""
    ln_bot = tuple(cfg.mlp_bot)
    m_den = dense_features or ln_bot[0]
    m_spa = cfg.sparse_feature_size
    num_fea = len(cfg.embedding_sizes) + 1
    m_den_out = ln_bot[-1]
    if m_den != ln_bot[0]:
        raise ConfigError(
            f"arch-dense-feature-size {m_den} does not match first dim of bottom mlp {ln_bot[0]}"
        )
    ln_emb = tuple(cfg.embedding_sizes)
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
    qr_tables = tuple(cfg.qr_flag and n > cfg.qr_threshold for n in ln_emb)
    if concat and not all(qr_tables):
        small = [f"t_{f}" for f, qr in zip(feature_names(len(ln_emb)), qr_tables) if not qr]
        raise ConfigError(
            f"--qr-operation=concat makes every table 2 x {m_spa} wide, but {', '.join(small)} "
            f"have at most --qr-threshold={cfg.qr_threshold} rows and stay {m_spa} wide: "
            "lower --qr-threshold below the smallest table or use add | mult"
        )
    md_tables = tuple(cfg.md_flag and n > cfg.md_threshold for n in ln_emb)
    emb_dims = (m_spa,) * len(ln_emb)
    if cfg.md_flag:
        dims = md_solver(ln_emb, cfg.md_temperature, m_spa, cfg.md_round_dims)
        if max(dims) != m_spa:
            raise ConfigError(
                f"--md-round-dims makes the widest table {max(dims)} wide, not "
                f"--arch-sparse-feature-size={m_spa}: use a power of 2 for it"
            )
        emb_dims = tuple(d if md else m_spa for d, md in zip(dims, md_tables))
    if cfg.interaction == "dot":
        pairs = num_fea * (num_fea + 1) if cfg.interaction_itself else num_fea * (num_fea - 1)
        num_int = pairs // 2 + m_den_out
    else:  # cat, dcn: the (F + 1) vectors side by side
        num_int = num_fea * m_den_out
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
        emb_dims=emb_dims,
        qr_tables=qr_tables,
        qr_collisions=cfg.qr_collisions if cfg.qr_flag else 0,
        qr_operation=cfg.qr_operation if cfg.qr_flag else "",
        md_tables=md_tables,
        weighted_pooling=cfg.weighted_pooling,
    )


def _mlp(widths: tuple[int, ...], sigmoid_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(n_in, n_out))
        last = i == len(widths) - 2
        layers.append(nn.Sigmoid() if last and sigmoid_last else nn.ReLU())
    return nn.Sequential(*layers)


class Interaction(nn.Module):
    """dot: [x, lower triangle of (T T^T)] with T = [x, e_1..e_F] as (B, F+1, D);
    cat: [x, e_1, ..., e_F]; dcn: DCN v2 over that concatenation (N = (F+1) D wide),
    torchrec's low-rank cross net: x_{l+1} = x_0 * (W_l (V_l x_l) + b_l) + x_l.
    Output (B, num_int)."""

    def __init__(self, num_fea: int, op: str, itself: bool, arch: Arch | None = None) -> None:
        super().__init__()
        self.op = op
        if op == "dcn":
            cross = LowRankCrossNet(arch.num_int, arch.dcn_num_layers, arch.dcn_low_rank_dim)
            self.dcn = InteractionDCNArch(num_fea - 1, cross)
        off = 1 if itself else 0
        li = [i for i in range(num_fea) for _ in range(i + off)]
        lj = [j for i in range(num_fea) for j in range(i + off)]
        self.register_buffer("li", torch.tensor(li, dtype=torch.long), persistent=False)
        self.register_buffer("lj", torch.tensor(lj, dtype=torch.long), persistent=False)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """dense (B, D), sparse (B, F, D) -> (B, num_int)."""
        if self.op == "dcn":
            return self.dcn(dense, sparse)
        if self.op == "cat":
            return torch.cat([dense, sparse.flatten(1)], dim=1)
        t = torch.cat([dense.unsqueeze(1), sparse], dim=1)
        z = torch.bmm(t, t.transpose(1, 2))
        return torch.cat([dense, z[:, self.li, self.lj]], dim=1)


class DLRM(nn.Module):
    """dense (B, m_den) + sparse KJT (F keys) -> click probability (B,)."""

    def __init__(self, arch: Arch, cfg: ModelConfig, device: torch.device | str = "meta"):
        super().__init__()
        data_type = DataType.FP16 if cfg.embedding_precision == "fp16" else DataType.FP32
        if sharded_row_weights(arch):
            self.sparse_arch = SequencePoolingArch(arch, data_type, torch.device(device))
        else:
            tables = [
                EmbeddingBagConfig(
                    name=t.name,
                    embedding_dim=t.dim,
                    num_embeddings=t.rows,
                    feature_names=[t.feature],
                    pooling=PoolingType.SUM,
                    data_type=data_type,
                )
                for t in table_specs(arch)
            ]
            ebc = EmbeddingBagCollection(
                tables=tables, is_weighted=bool(arch.weighted_pooling), device=torch.device(device)
            )
            self.sparse_arch = EmbeddingArch(ebc, arch)
        self.bot_l = _mlp(arch.ln_bot, sigmoid_last=False)
        self.interaction = Interaction(arch.num_fea, cfg.interaction, cfg.interaction_itself, arch)
        self.top_l = _mlp(arch.ln_top, sigmoid_last=True)
        self.loss_threshold = cfg.loss_threshold

    def forward(self, dense: torch.Tensor, sparse) -> torch.Tensor:
        x = self.bot_l(dense)
        p = self.top_l(self.interaction(x, self.sparse_arch(sparse))).squeeze(1)
        t = self.loss_threshold
        return torch.clamp(p, min=t, max=1.0 - t) if 0.0 < t < 1.0 else p


class DLRMTrain(DLRM):
    """DLRM with its loss, called on a torchrec Batch: (loss, (loss detached, (B,)
    predictions)). The form TrainPipelineSparseDist drives, and the one module the
    trainer shards; a subclass, so parameter names stay DLRM's."""

    def __init__(self, arch: Arch, cfg: ModelConfig, device: torch.device | str = "meta"):
        super().__init__(arch, cfg, device)
        self.loss_fn = make_loss(cfg)

    def forward(self, batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        p = super().forward(batch.dense_features, batch.sparse_features)
        loss = self.loss_fn(p, batch.labels)
        return loss, (loss.detach(), p.detach())


def parameter_order(arch: Arch) -> list[str]:
    """Our parameter names in the reference's `dlrm.parameters()` order."""
    names = []
    for t in table_specs(arch):  # a QR table's quotient, remainder; an MD table's projection
        names.append(table_parameter(arch, t))
        if t.dim < arch.m_spa:
            names.append(f"sparse_arch.proj.{t.name}.weight")
    if arch.weighted_pooling == "learned":  # after the tables, as the reference's v_W_l
        names += [row_weight_parameter(arch, t) for t in table_specs(arch)]
    for prefix, widths in (("bot_l", arch.ln_bot), ("top_l", arch.ln_top)):
        for i in range(len(widths) - 1):
            names += [f"{prefix}.{2 * i}.weight", f"{prefix}.{2 * i}.bias"]
    for kind in ("W_kernels", "V_kernels", "bias"):  # dcn, after what the reference has
        names += [f"interaction.dcn.crossnet.{kind}.{i}" for i in range(arch.dcn_num_layers)]
    return names


def make_loss(cfg: ModelConfig):
    """(prediction (B,), target (B,)) -> scalar mean loss, as the reference's loss_fn_wrap."""
    if cfg.loss_function == "mse":
        return nn.MSELoss(reduction="mean")
    if cfg.loss_function == "bce":
        return nn.BCELoss(reduction="mean")
    weights = torch.tensor(cfg.loss_weights, dtype=torch.float32)
    bce = nn.BCELoss(reduction="none")

    def wbce(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (weights.to(pred.device)[target.long()] * bce(pred, target)).mean()

    return wbce
