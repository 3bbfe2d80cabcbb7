"""`random_fast`'s generator in torch ops, on any device, bit for bit numpy's numbers.

At ~2M samples/s x 214 ids per sample a GPU outruns any numpy generator on the host's
cores, so this module draws the same samples with torch tensors on the training device:
`draw_slice_torch` and `TorchRandomFastData` are `random_fast.draw_slice` and
`RandomFastData` with a `device`, and give exactly the same dense features, bag sizes,
indices and targets (see `random_fast` for what they are). FastDataSpec, the counter layout
(DOMAIN_SHIFT), the zipf laws (`ZipfLaw`) and the per-size plans (`SlicePlans`) come from
there; the hash's constants and the batch keys (`derive_key`) from `hashing`.

How numpy's uint64 arithmetic becomes torch's:
  words      int64 tensors holding the same 64 bits (two's complement): addition and
             multiplication wrap mod 2^64 alike, xor is bitwise; constants >= 2^63 are
             passed as their int64 equivalents (`_signed`).
  x >> k     logical, as `(x >> k) & (2^(64-k) - 1)`: torch's int64 shift is arithmetic.
  to float   `(z >> 11) < 2^53` converts to float64 exactly, `(z >> 40) < 2^24` to float32
             exactly; the scalings by 2^-53, 2^-24, 2^-32 and by (rows - 1) * 2^-53 are single
             IEEE operations, so they round alike on every device.
  rounding   torch.round is round-half-even like np.rint / np.round; float -> int64
             truncates like astype; searchsorted(right=True) is side="right".
So dense features, targets, bag sizes, uniform indices and zipf head ranks (k <= 1024) are
identical by construction, whatever the device.

Gaussian (log1p, sqrt, cos) and zipf tail (exp, pow) values pass float64 functions that
libraries round differently. Against numpy 2.4 on an AVX2 CPU, torch 2.14's CPU results
differ in the last bit for 8% of inputs of log1p, 1.7% of pow, 1.3% of sqrt (Sleef's, not
correctly rounded), 0.5% of exp and 0.1% of cos; CUDA's are within 1-2 ulp, numpy's glibc
within 1. An id flips only where its float lands within that error of an integer (gaussian:
truncation) or a half-integer (zipf: rank rounding): per draw, a chance of order
2^-52 * |x| (x = sigma * N(0, 1), or the tail rank) times that share, at most ~1e-9 for a
40M-row zipf table. Measured here with `exact=False`: no differing id in 30M draws each of
gaussian (sigma 9 and 1e5) and zipf (s = 1.0 and 1.05; tables of 5000, 3M and 40M rows),
nor in the tests' 1M; but 2 (s = 1.0) and 1 (s = 1.05) of 3000 uniforms crafted to put a
zipf rank within a few ulp of k + 1/2 gave other ids than numpy's. So with `exact=True`
(the default) every value within 2^-44 relative of such a boundary (over 64 ulp, far above
any library's error; 0-3 values per 30M draws above) or, zipf, not finite below 2^62 is
recomputed on the host by numpy with random_fast's own formulas, and the output is numpy's
bit for bit. That costs one device-to-host sync per gaussian or zipf batch (the host must
learn whether any value needs it); `exact=False` skips it and keeps the rare flips.
Uniform ids never need it: random bag sizes sync once (the values' count), and fixed or
multi-hot bags (MLPerf's) draw without any sync.

Planted labels (`planted`) need no host work or sync either: their bag sums are int64, the
rest is IEEE +, -, *, / in planted's order and the sigmoid is planted's table, copied to the
device (`_PlantedLabels`), so u < p comes out as numpy's on every device.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dlrm_dist.arch import feature_names
from dlrm_dist.data import planted
from dlrm_dist.data.batch_source import BatchSource, RawBatch, epoch_size
from dlrm_dist.data.hashing import GOLDEN, MASK64, MIX1, MIX2, UNIT24, UNIT32, UNIT53, derive_key
from dlrm_dist.data.random_fast import DOMAIN_SHIFT, FastDataSpec, SlicePlans, ZipfLaw

_TOL = 2.0**-44  # exact=True: relative distance to a rounding boundary recomputed by numpy
_INT_SAFE = 2.0**62  # zipf tail floats at or above it (or NaN) do not fit int64 ranks


def _signed(word: int) -> int:
    """The int64 with the same 64 bits as the unsigned word (two's complement)."""
    word &= MASK64
    return word - (1 << 64) if word >> 63 else word


_G = _signed(GOLDEN)
_C1 = _signed(MIX1)
_C2 = _signed(MIX2)


def _srl(z: torch.Tensor, k: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """z >> k as on uint64 (logical): the arithmetic shift, its k sign copies masked off."""
    out = torch.bitwise_right_shift(z, k, out=out) if out is not None else z >> k
    return out.bitwise_and_((1 << (64 - k)) - 1)


def _hash(state: torch.Tensor, key: int) -> torch.Tensor:
    """splitmix64 outputs (L,) int64 of the states state + key (L,), key a signed word:
    hashing.hash_array in place on one temporary."""
    z = state + key
    tmp = torch.empty_like(z)
    z ^= _srl(z, 30, out=tmp)
    z *= _C1
    z ^= _srl(z, 27, out=tmp)
    z *= _C2
    z ^= _srl(z, 31, out=tmp)
    return z


def _unit53(z: torch.Tensor) -> torch.Tensor:
    """Doubles in [0, 1) from the top 53 bits (exact)."""
    return _srl(z, 11).to(torch.float64).mul_(UNIT53)


def _weyl(domain: int, local: torch.Tensor) -> torch.Tensor:
    """G * ((domain << 40) + local) mod 2^64, local (L,) int64: the counter part of a state."""
    return (local + _signed(domain << DOMAIN_SHIFT)) * _G


@dataclass
class TorchRawBatch:
    """random_fast's RawBatch as tensors on the device: dense (n, m) f32, lengths (F, n)
    int64, values (sum of lengths,) int64 table-major, targets (n, 1) f32. per_table holds
    each table's count of values on the host, so a KJT needs no device sync to split them."""

    dense: torch.Tensor
    lengths: torch.Tensor
    values: torch.Tensor
    targets: torch.Tensor
    per_table: tuple[int, ...]

    def numpy(self) -> RawBatch:
        """The same batch as numpy arrays on the host (random_fast's type)."""
        parts = (self.dense, self.lengths, self.values, self.targets)
        return RawBatch(*(t.cpu().numpy() for t in parts))

    def to_batch(self, keys: list[str]) -> Batch:
        """TorchRec Batch on the device: dense (n, m), KJT keyed `keys` (F,), labels (n,);
        the KJT's per-key lengths and offsets are set from per_table (what `sync` computes)."""
        n = self.targets.shape[0]
        kjt = KeyedJaggedTensor(
            keys=keys,
            values=self.values,
            lengths=self.lengths.reshape(-1),
            stride=n,
            length_per_key=list(self.per_table),
            offset_per_key=list(itertools.accumulate(self.per_table, initial=0)),
        )
        return Batch(
            dense_features=self.dense, sparse_features=kjt, labels=self.targets.reshape(-1)
        )


class _Indices:
    """Index draws from hashes, per distribution; the zipf constants come from ZipfLaw.

    With `exact`, values whose float lands within _TOL of a rounding boundary are redone on
    the host by numpy (see the module docstring): their device and numpy floats may differ
    in the last bits there, nowhere else.
    """

    def __init__(self, spec: FastDataSpec, seed: int, device: torch.device, exact: bool):
        self.spec, self.exact = spec, exact
        self.mu = (spec.rmax + spec.rmin) / 2.0 if spec.mu == -1 else spec.mu
        self.zipf = ZipfLaw(spec, seed) if spec.dist == "zipf" else None
        if self.zipf is not None:
            zipf = self.zipf
            on = functools.partial(torch.as_tensor, device=device)
            self.cdf, self.total = on(zipf.cdf), on(zipf.total)  # (head,) f64, (F,) f64
            self.rows, self.mult, self.shift = on(zipf.rows), on(zipf.mult), on(zipf.shift)

    def __call__(
        self, z: torch.Tensor, table: torch.Tensor | None, scale: torch.Tensor | None
    ) -> torch.Tensor:
        """Indices (L,) int64 of hashes z (L,), table-major; table (L,) the table of each
        (zipf), scale (L,) (rows - 1) * 2^-53 (uniform)."""
        if self.spec.dist == "uniform":
            assert scale is not None
            return _srl(z, 11).to(torch.float64).mul_(scale).round_().to(torch.int64)
        if self.spec.dist == "gaussian":
            return self.gaussian(z)
        assert table is not None
        return self.zipf_rows(_unit53(z), table)

    def gaussian(self, z: torch.Tensor) -> torch.Tensor:
        """trunc(clip(mu + sigma * N(0, 1))) (L,) of hashes z (L,): Box-Muller on the two
        32-bit halves, the same expression in the same order as random_fast's."""
        spec = self.spec
        u1 = _srl(z, 32).to(torch.float64).mul_(UNIT32)
        u2 = (z & 0xFFFFFFFF).to(torch.float64).mul_(UNIT32)
        normal = torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos((2.0 * math.pi) * u2)
        spread = spec.sigma * normal
        x = self.mu + spread
        out = torch.clamp(x, spec.rmin, spec.rmax).to(torch.int64)
        if self.exact:  # truncation flips where x crosses an integer
            near = ~((x - torch.round(x)).abs_() > _TOL * (x.abs() + spread.abs_()))
            _redo_on_host(out, near, lambda i: _numpy_gaussian(z[i], spec, self.mu))
        return out

    def zipf_rows(self, u: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Rows (L,) of the zipf draws of uniforms u (L,) f64 in tables `table` (L,):
        ZipfLaw.ranks then ZipfLaw.rows_of, as tensor ops."""
        assert self.zipf is not None
        zipf = self.zipf
        v = u * self.total[table]
        rank = torch.searchsorted(self.cdf, v, right=True)
        tail = v >= zipf.head_mass
        x = self._tail(v - zipf.head_mass)  # every value's, the head's discarded below
        fits = x < _INT_SAFE  # NaN too: numpy's cast of those is platform-defined
        half = x + 0.5
        tail_rank = torch.where(fits, half, _INT_SAFE).floor_().to(torch.int64) - 1
        rank = torch.where(tail, tail_rank, rank)
        n = self.rows[table]
        rank = torch.minimum(rank.clamp_min_(0), n - 1)
        out = (self.mult[table] * rank + self.shift[table]) % n
        if self.exact:  # rank rounding flips where x crosses a half-integer
            near = ~((half - torch.round(half)).abs_() > _TOL * x) | ~fits
            _redo_on_host(out, tail & near, lambda i: _numpy_zipf(zipf, u[i], table[i]))
        return out

    def _tail(self, w: torch.Tensor) -> torch.Tensor:
        """Continuous inverse CDF beyond the head: 1-based rank x (L,) f64 of excess mass w."""
        zipf, s = self.zipf, self.spec.zipf_exponent
        assert zipf is not None
        if s == 1.0:
            return (zipf.head + 0.5) * torch.exp(w)
        return torch.pow(torch.clamp_min(zipf.lo + (1.0 - s) * w, 0.0), 1.0 / (1.0 - s))


class _PlantedLabels:
    """planted.Teacher's labels as tensor ops on the batch's device: the same hashes, int64
    bag sums and float64 operations in the same order (planted.Teacher.logits, combine,
    grid_index) and the same sigmoid table (copied, not recomputed)."""

    def __init__(self, teacher: planted.Teacher, device: torch.device) -> None:
        self.teacher = teacher
        on = functools.partial(torch.as_tensor, device=device)
        self.keys = on(teacher.keys.view(np.int64))  # (used,) the same 64 bits, signed
        self.weights = on(teacher.dense_weights)  # (J,) f64
        self.scale = on(teacher.scale)  # (used,) f64
        self.table = on(planted.sigmoid_table())

    def __call__(self, batch: TorchRawBatch) -> torch.Tensor:
        """0/1 targets (n, 1) f32 of the batch, from its target uniforms."""
        t, n = self.teacher, batch.targets.shape[0]
        lengths = batch.lengths[: t.used].reshape(-1)  # (used * n,) bags of tables 0 ..
        total = sum(batch.per_table[: t.used])
        counts = batch.lengths[: t.used].sum(dim=1)  # on the device: no copy, no sync
        keys = self.keys.repeat_interleave(counts, output_size=total)
        z = _hash(batch.values[:total] * _G + keys, 0)
        e = _srl(z, 64 - planted.EFFECT_BITS - 1) - (1 << planted.EFFECT_BITS)  # e * 2^20
        sums = torch.zeros(total + 1, dtype=torch.int64, device=e.device)
        torch.cumsum(e, dim=0, out=sums[1:])  # bag sums as differences: exact ints
        ends = torch.cumsum(lengths, dim=0)
        coef = self.scale.repeat_interleave(n) / lengths.to(torch.float64)
        terms = (sums[ends] - sums[ends - lengths]).to(torch.float64) * coef
        return self._labels(batch, terms.view(t.used, n))

    def _labels(self, batch: TorchRawBatch, terms: torch.Tensor) -> torch.Tensor:
        """planted.combine, grid_index, the sigmoid table and u < p: (n, 1) f32."""
        t = self.teacher
        logit = batch.dense[:, : self.weights.numel()].to(torch.float64) @ self.weights
        if t.dense_offset:
            logit = logit + t.dense_offset
        for k in t.main:
            logit = logit + terms[k]
        if t.pair is not None:
            a, b = t.pair
            logit = logit + terms[a] * terms[b]
        row = (logit * planted.GRID).round_().to(torch.int64)
        return (batch.targets.to(torch.float64) < self.table[row][:, None]).to(torch.float32)


def _redo_on_host(
    out: torch.Tensor,
    flagged: torch.Tensor,
    numpy_values: Callable[[torch.Tensor], np.ndarray],
) -> None:
    """out[i] = numpy_values(i) for the flagged (L,) positions i (a device index tensor);
    the one host sync of exact mode is the nonzero."""
    where = torch.nonzero(flagged).squeeze(1)
    if where.numel():
        out[where] = torch.from_numpy(numpy_values(where)).to(out.device)


def _numpy_gaussian(z: torch.Tensor, spec: FastDataSpec, mu: float) -> np.ndarray:
    """random_fast's gaussian indices (L,) of hashes z (L,), computed by numpy on the host
    with the same expression (random_fast._Plan._other)."""
    w = z.cpu().numpy().view(np.uint64)
    u1 = (w >> np.uint64(32)).astype(np.float64) * UNIT32
    u2 = (w & np.uint64(0xFFFFFFFF)).astype(np.float64) * UNIT32
    normal = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
    return np.clip(mu + spec.sigma * normal, spec.rmin, spec.rmax).astype(np.int64)


def _numpy_zipf(zipf: ZipfLaw, u: torch.Tensor, table: torch.Tensor) -> np.ndarray:
    """random_fast's zipf rows (L,) of uniforms u (L,) in tables `table` (L,), by ZipfLaw."""
    u_np, t_np = u.cpu().numpy(), table.cpu().numpy()
    return zipf.rows_of(zipf.ranks(u_np, t_np), t_np)


class _Plan:
    """random_fast._Plan on a device: the batch-independent hash states (G * counter) of
    drawing samples [start, stop), and per-draw constants, as tensors.

    Fixed bag sizes: one hash over dense, targets and all index slots, in output order.
    Random bag sizes: one hash over dense, targets and bag sizes; then the states of the
    slots the bags use (their first `length` of w_t) are built by one repeat_interleave.
    """

    def __init__(
        self,
        spec: FastDataSpec,
        seed: int,
        start: int,
        stop: int,
        device: torch.device,
        exact: bool,
    ) -> None:
        spec.validate()
        self.spec, self.n = spec, stop - start
        n, m, nt = self.n, spec.dense_features, len(spec.table_sizes)
        widths = spec.bag_widths()
        if stop * max(max(widths), m, 1) >= 1 << DOMAIN_SHIFT:
            raise ValueError(f"batch of {stop} samples is too large for random-fast; shrink it")
        ints = functools.partial(torch.arange, dtype=torch.int64, device=device)
        samples = ints(start, stop)
        parts = [_weyl(0, (samples[:, None] * m + ints(m)).reshape(-1)), _weyl(1, samples)]
        self.dense_end, self.targets_end = n * m, n * m + n
        # bag (t, i) owns slots (domain 3 + 2t, i * w_t + j), j < w_t
        bag_base = [_weyl(3 + 2 * t, samples * w) for t, w in enumerate(widths)]
        rows = torch.tensor(spec.table_sizes, dtype=torch.float64, device=device)
        self.scale = (rows - 1) * UNIT53  # (F,) uniform: u53 -> index
        width = torch.tensor(widths, dtype=torch.int64, device=device)
        if spec.random_bags:
            parts += [_weyl(2 + 2 * t, samples) for t in range(nt)]
            self.bag_base = torch.cat(bag_base)  # (F * n,)
            self.caps = (width.to(torch.float64) * UNIT53).repeat_interleave(n)  # (F * n,)
            self.slot_state = ints(n * sum(widths)) * _G
        else:
            self.value_state = torch.cat(
                [(b[:, None] + _weyl(0, ints(w))).reshape(-1) for b, w in zip(bag_base, widths)]
            )
            self.lengths = width[:, None].repeat(1, n)  # (F, n)
            self.per_table = tuple(w * n for w in widths)
            self.table = ints(nt).repeat_interleave(width * n)  # (L,) table of each value
            self.value_scale = self.scale[self.table]
        self.state = torch.cat(parts)
        self.indices = _Indices(spec, seed, device, exact)
        self.planted = None
        if spec.labels == "planted":
            self.planted = _PlantedLabels(planted.Teacher.of(spec, seed), device)

    def draw(self, key: int) -> TorchRawBatch:
        """The samples of the batch whose key (hashing.derive_key) is `key`; their targets
        the uniforms, rounded (round_targets) or the teacher's clicks (planted)."""
        raw = self._draw(key)
        if self.planted is not None:
            raw.targets = self.planted(raw)
        elif self.spec.round_targets:
            raw.targets.round_()
        return raw

    def _draw(self, key: int) -> TorchRawBatch:
        spec, n, key = self.spec, self.n, _signed(key)
        z = _hash(self.state, key)
        floats = _srl(z[: self.targets_end], 40).to(torch.float32).mul_(UNIT24)
        dense = floats[: self.dense_end].view(n, spec.dense_features)
        targets = floats[self.dense_end :].view(n, 1)
        if not spec.random_bags:
            zv = _hash(self.value_state, key)
            values = self.indices(zv, self.table, self.value_scale)
            return TorchRawBatch(dense, self.lengths.clone(), values, targets, self.per_table)
        return self._random_bags(z[self.targets_end :], key, dense, targets)

    def _random_bags(
        self, z: torch.Tensor, key: int, dense: torch.Tensor, targets: torch.Tensor
    ) -> TorchRawBatch:
        """Bag sizes from their hashes z (F * n,), then the index draws of the slots used."""
        u = _srl(z, 11).to(torch.float64).mul_(self.caps)  # the 53-bit uniform times the cap
        lengths = u.clamp_min_(1.0).round_().to(torch.int64)  # (F * n,)
        per_table = lengths.view(-1, self.n).sum(dim=1)
        counts = tuple(per_table.tolist())  # a host sync: how many values there are
        total = sum(counts)
        ends = torch.cumsum(lengths, dim=0)
        # slot j of bag b is value ends[b] - lengths[b] + j: state = bag_base[b] + G * j
        first = self.slot_state[ends - lengths]
        state = torch.repeat_interleave(self.bag_base - first, lengths, output_size=total)
        state += self.slot_state[:total]
        table = scale = None
        if self.spec.dist == "zipf":
            table = torch.arange(len(counts), device=z.device)
            table = table.repeat_interleave(per_table, output_size=total)
        elif self.spec.dist == "uniform":
            scale = self.scale.repeat_interleave(per_table, output_size=total)
        values = self.indices(_hash(state, key), table, scale)
        return TorchRawBatch(dense, lengths.view(-1, self.n), values, targets, counts)


@functools.lru_cache(maxsize=4)  # plans hold ~24 bytes of device memory per index drawn
def _plan(
    spec: FastDataSpec, seed: int, start: int, stop: int, device: torch.device, exact: bool
) -> _Plan:
    return _Plan(spec, seed, start, stop, device, exact)


def draw_slice_torch(
    spec: FastDataSpec,
    seed: int,
    stream: int,
    batch: int,
    start: int,
    stop: int,
    device: torch.device | str = "cpu",
    exact: bool = True,
) -> TorchRawBatch:
    """random_fast.draw_slice on `device`: samples [start, stop) of global batch `batch`,
    dense (n, m) f32, lengths (F, n) int64, values (sum of lengths,) int64 table-major,
    targets (n, 1) f32, n = stop - start, equal to draw_slice's (see `exact`)."""
    if not 0 <= start < stop:
        raise ValueError(f"sample range [{start}, {stop}) must be non-empty, from 0 up")
    plan = _plan(spec, seed, start, stop, torch.device(device), exact)
    return plan.draw(derive_key(seed, stream, batch))


class TorchRandomFastData(BatchSource):
    """random_fast.RandomFastData drawn on `device`: the same batches, this rank's slice of
    each, as TorchRec Batches of device tensors (see there for num_batches and data_size)."""

    def __init__(
        self,
        spec: FastDataSpec,
        seed: int,
        num_batches: int,
        mini_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        data_size: int = 0,
        stream: int = 0,
        device: torch.device | str = "cpu",
        exact: bool = True,
    ) -> None:
        keys = feature_names(len(spec.table_sizes))
        epoch = epoch_size(num_batches, data_size, mini_batch_size)
        super().__init__(keys, mini_batch_size, *epoch, rank, world_size)
        self.spec, self.seed, self.stream = spec, seed, stream
        self.device, self.exact = torch.device(device), exact
        make = functools.partial(_Plan, spec, seed, device=self.device, exact=exact)
        self._plans = SlicePlans(self, make)

    def raw(self, index: int) -> TorchRawBatch:  # type: ignore[override]  # tensors, not numpy
        """This rank's slice of global batch `index` on the device, n = batch_size(index) /
        world_size samples (shapes as TorchRawBatch)."""
        plan = self._plans(self.batch_size(index))
        return plan.draw(derive_key(self.seed, self.stream, index))

    def batch(self, index: int) -> Batch:
        """TorchRec Batch on the device: dense (n, m), KJT keyed feature_names(F), labels (n,)."""
        return self.raw(index).to_batch(self.keys)
