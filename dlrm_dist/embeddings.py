"""The embedding side of DLRM: the reference's plain, quotient-remainder (QR) and
mixed-dimension (MD) tables and its weighted pooling, all as rows of one TorchRec
EmbeddingBagCollection, so every table shards like any other.

Shapes: B bags per feature (batch), F input features (one per reference table),
D = the bottom MLP's output width (every feature's vector ends up D wide).

- QR (Shi et al. 2019, the reference's QREmbeddingBag): a table of n > --qr-threshold
  rows becomes a quotient table of ceil(n / c) rows and a remainder table of c rows
  (c = --qr-collisions), both of dim --arch-sparse-feature-size. Index i looks up row
  i // c of the first and i % c of the second; the two bag sums are combined by
  concat (2x the dim), add or mult. Here they are two EBC tables read by two derived
  features `cat_k_q`, `cat_k_r` (the ids transformed before the lookup).
- MD (Ginart et al. 2019, the reference's md_solver + PrEmbeddingBag): table dims from
  the alpha-power rule (arch.md_solver); a table of n > --md-threshold rows and dim d < D is
  looked up at dim d and projected to D by a bias-free Linear (d -> D), which is dense
  and trains with the MLPs.
- Weighted pooling: every bag sum becomes sum_j w[i_j] E[i_j], with one weight per row
  of each table: ones and fixed (`fixed`), or a trainable parameter starting at ones
  (`learned`). Fixed weights travel as the KJT's per-index weights into a weighted EBC.
  Learned ones need the gradient dL/dw[i_j] = <dL/d bag, E[i_j]>, which neither a pooled
  lookup returns nor torchrec's input all-to-all carries back to KJT weights. So, when the
  tables can shard (dim % 4 == 0, FBGEMM's fused kernels), the rows are looked up unpooled
  (torchrec's EmbeddingCollection: B x L x D through the output all-to-all instead of
  B x D) from the table and from a weight table w_<feature> (rows x 4, the weight in
  column 0; 4 wide because the fused kernels need it, the other columns never get a
  gradient), both sharded, and the bags are summed here (SequencePoolingArch). Otherwise
  the weights are a replicated dense parameter per table, as in the reference, and the
  tables run data_parallel.

Written here rather than taken from torchrec because torchrec's SparseArch needs one
dim for all tables and has no QR/MD.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.models.dlrm import SparseArch
from torchrec.modules.embedding_configs import DataType, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from dlrm_dist.arch import ROW_WEIGHT_DIM, Arch, feature_names, row_weight_table, table_specs

QR_OPERATIONS = ("concat", "add", "mult")


@torch.fx.wrap
def derive_features(
    features: KeyedJaggedTensor,
    split: list[str],
    collisions: int,
    weighted: bool,
    row_weights: dict[str, torch.Tensor],
) -> KeyedJaggedTensor:
    """The KJT the EBC reads: each feature in `split` replaced by `<key>_q` (ids // c)
    and `<key>_r` (ids % c); with `weighted`, per-index weights w[id] from row_weights
    (a feature without an entry: ones). Same bags (B per key) in the same order.

    A leaf for fx (torch.fx.wrap): TrainPipelineSparseDist traces the model, and this
    loops over the KJT's keys, which a trace cannot."""
    per_key = features.to_dict()
    keys: list[str] = []
    values: list[torch.Tensor] = []
    lengths: list[torch.Tensor] = []
    weights: list[torch.Tensor] = []
    for key in features.keys():
        ids, lens = per_key[key].values(), per_key[key].lengths()
        if weighted:
            if key in row_weights:
                w = torch.index_select(row_weights[key], 0, ids)
            else:
                w = torch.ones(ids.shape, dtype=torch.float32, device=ids.device)
        if key in split:
            keys += [f"{key}_q", f"{key}_r"]
            values += [torch.div(ids, collisions, rounding_mode="floor"), ids % collisions]
            lengths += [lens, lens]
            if weighted:
                weights += [w, w]
        else:
            keys.append(key)
            values.append(ids)
            lengths.append(lens)
            if weighted:
                weights.append(w)
    return KeyedJaggedTensor(
        keys=keys,
        values=torch.cat(values),
        lengths=torch.cat(lengths),
        weights=torch.cat(weights) if weighted else None,
        stride=features.stride(),
    )


class FeatureIds(nn.Module):
    """KJT -> the KJT the EBC reads, for QR and fixed weights (see derive_features).
    A module without parameters, so TrainPipelineSparseDist (pipeline_postproc) can run
    it with the input all-to-all, one batch ahead."""

    def __init__(self, split: list[str], collisions: int, weighted: bool) -> None:
        super().__init__()
        self.split, self.collisions, self.weighted = split, collisions, weighted

    def forward(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        return derive_features(features, self.split, self.collisions, self.weighted, {})


class EmbeddingArch(SparseArch):
    """KJT (F keys, B bags each) -> (B, F, D): torchrec's SparseArch, plus the
    reference's QR tables, MD projections and weighted pooling when configured.

    Parameters: the EBC's tables (`embedding_bag_collection.embedding_bags.<table>.weight`),
    MD projections `proj.<table>.weight` (D, d), learned pooling weights
    `pooling_weights.<table>` (n,)."""

    def __init__(self, ebc: EmbeddingBagCollection, arch: Arch) -> None:
        super().__init__(ebc)
        specs = table_specs(arch)
        self.features = feature_names(len(arch.ln_emb))
        self.qr_operation = arch.qr_operation
        self.split = [f for f, qr in zip(self.features, arch.qr_tables) if qr]
        self.collisions = arch.qr_collisions
        self.weighted = arch.weighted_pooling in ("fixed", "learned")
        self.proj = nn.ModuleDict(
            {s.name: nn.Linear(s.dim, arch.m_spa, bias=False) for s in specs if s.dim < arch.m_spa}
        )
        self.pooling_weights = nn.ParameterDict()
        if arch.weighted_pooling == "learned":  # replicated: not sharded_row_weights(arch)
            for s in specs:
                self.pooling_weights[s.name] = nn.Parameter(torch.ones(s.rows))
        self.ids = FeatureIds(self.split, self.collisions, arch.weighted_pooling == "fixed")
        self._table_of = {s.feature: s.name for s in specs}
        self._plain = not (self.split or self.weighted or len(self.proj))
        self.feature_rows = list(arch.ln_emb)  # rows of each input feature's table
        self.table_sources = {s.name: s.source for s in specs}  # table -> input feature

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        if self._plain:
            pooled = self.embedding_bag_collection(features)
            # values (B, F * D), keys in the tables' order (not always so once sharded): the
            # (B, F, D) view is torchrec's split per key and cat, without the copies; the
            # same numbers (tested). Traced (the pipeline's fx), torchrec's way.
            if not torch.fx._symbolic_trace.is_fx_tracing() and (
                pooled.keys() == self._sparse_feature_names
            ):
                return pooled.values().reshape(-1, self.F, self.D)
            sparse = pooled.to_dict()
            return torch.cat([sparse[n] for n in self._sparse_feature_names], dim=1).reshape(
                -1, self.F, self.D
            )
        if len(self.pooling_weights):  # learned (no QR): the weights of this step
            row_weights = {f: self.pooling_weights[t] for f, t in self._table_of.items()}
            kjt = derive_features(features, [], 0, True, row_weights)
        else:
            kjt = self.ids(features)
        pooled = self.embedding_bag_collection(kjt).to_dict()  # key -> (B, dim)
        vectors: list[torch.Tensor] = []
        for f in self.features:
            if f in self.split:
                q, r = pooled[f"{f}_q"], pooled[f"{f}_r"]
                if self.qr_operation == "concat":
                    vectors.append(torch.cat([q, r], dim=1))
                elif self.qr_operation == "add":
                    vectors.append(q + r)
                else:
                    vectors.append(q * r)
            elif self._table_of[f] in self.proj:
                vectors.append(self.proj[self._table_of[f]](pooled[f]))
            else:
                vectors.append(pooled[f])
        return torch.stack(vectors, dim=1)


@torch.fx.wrap
def weighted_bag_sums(
    rows: dict[str, JaggedTensor], weights: dict[str, JaggedTensor], keys: list[str]
) -> torch.Tensor:
    """(B, F, D): per key, bag b's sum_j w_j E_j over its ids j, E_j the unpooled rows
    (values (N, D)) and w_j column 0 of the weight rows (values (N, 4)), both in the
    KJT's id order (lengths (B,)). A leaf for fx, as derive_features."""
    sums: list[torch.Tensor] = []
    for key in keys:
        values, lengths = rows[key].values(), rows[key].lengths()
        weighted = values * weights[key].values()[:, :1].to(values.dtype)
        batch = lengths.numel()
        bag = torch.repeat_interleave(torch.arange(batch, device=values.device), lengths)
        out = torch.zeros(batch, values.shape[1], dtype=values.dtype, device=values.device)
        sums.append(out.index_add(0, bag, weighted))
    return torch.stack(sums, dim=1)


class SequencePoolingArch(nn.Module):
    """KJT (F keys, B bags each) -> (B, F, D) with learned pooling weights on sharded
    tables (see the module docstring): the tables in `embedding_collection`
    (`embeddings.t_<feature>.weight`, rows x D) and the weights in
    `row_weight_collection` (`embeddings.w_<feature>.weight`, rows x 4, column 0)."""

    def __init__(self, arch: Arch, data_type: DataType, device: torch.device) -> None:
        super().__init__()
        specs = table_specs(arch)
        self.specs = specs
        self.features = feature_names(len(arch.ln_emb))
        self.embedding_collection = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name=s.name,
                    embedding_dim=s.dim,
                    num_embeddings=s.rows,
                    feature_names=[s.feature],
                    data_type=data_type,
                )
                for s in specs
            ],
            device=device,
        )
        self.row_weight_collection = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name=row_weight_table(s),
                    embedding_dim=ROW_WEIGHT_DIM,
                    num_embeddings=s.rows,
                    feature_names=[s.feature],
                )
                for s in specs
            ],
            device=device,
        )
        self.feature_rows = list(arch.ln_emb)
        self.table_sources = {s.name: s.source for s in specs}
        self.table_sources.update({row_weight_table(s): s.source for s in specs})

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        rows = self.embedding_collection(features)
        weights = self.row_weight_collection(features)
        return weighted_bag_sums(rows, weights, self.features)


def sparse_collections(sparse_arch: nn.Module) -> list[tuple[nn.Module, bool]]:
    """The torchrec embedding modules of a sparse arch, the ones the planner shards, each
    with whether it holds learned pooling weights (which train as the reference's dense
    weights do) rather than table rows."""
    if isinstance(sparse_arch, SequencePoolingArch):
        return [
            (sparse_arch.embedding_collection, False),
            (sparse_arch.row_weight_collection, True),
        ]
    return [(sparse_arch.embedding_bag_collection, False)]
