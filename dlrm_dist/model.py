"""DLRM with the reference's architecture, over a TorchRec EmbeddingBagCollection.

Shapes: B batch, F sparse features (= tables), D embedding dim (= last bottom-MLP width).
The embedding side is torchrec's `SparseArch`; the dense side is ours because the
reference differs from torchrec's DLRM arches: a sigmoid on the last top layer, a
lower-triangle interaction order (torchrec takes the upper one), and optional
self-interaction. This module knows nothing about process groups.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.models.dlrm import InteractionDCNArch
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from dlrm_dist.arch import Arch, sharded_row_weights, table_specs
from dlrm_dist.config import ModelConfig
from dlrm_dist.embeddings import EmbeddingArch, SequencePoolingArch


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
        # the pairs (i, j) as flat positions of the (F+1)^2 products: one index_select (its
        # backward an index_add) instead of z[:, li, lj] (index_put): the same values, and
        # the interaction's forward and backward at config C's shape ~25 % faster (measured)
        flat = [i * num_fea + j for i, j in zip(li, lj)]
        self.register_buffer("flat", torch.tensor(flat, dtype=torch.long), persistent=False)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """dense (B, D), sparse (B, F, D) -> (B, num_int)."""
        if self.op == "dcn":
            return self.dcn(dense, sparse)
        if self.op == "cat":
            return torch.cat([dense, sparse.flatten(1)], dim=1)
        t = torch.cat([dense.unsqueeze(1), sparse], dim=1)
        z = torch.bmm(t, t.transpose(1, 2))
        return torch.cat([dense, z.flatten(1).index_select(1, self.flat)], dim=1)


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
        self.bf16 = cfg.dense_precision == "bf16"
        # where the matmuls run, for autocast: a plain string, not read off the batch (the
        # pipeline traces this forward with fx, where the batch's tensors are proxies)
        self.device_type = "cpu"

    def forward(self, batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        # --dense-precision=bf16: matmuls in bf16 while training; the loss in fp32. No
        # autocast context otherwise: a disabled one still costs ~4 us a step
        if self.bf16 and self.training:
            with torch.autocast(self.device_type, torch.bfloat16):
                p = super().forward(batch.dense_features, batch.sparse_features)
            p = p.float()
        else:
            p = super().forward(batch.dense_features, batch.sparse_features)
        loss = self.loss_fn(p, batch.labels)
        return loss, (loss.detach(), p.detach())


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
