"""The trainer's data: the source a config names, this rank's slice of it, and the batches
of the epochs in order (timed, checked, on the device)."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from dlrm_dist.arch import Arch
from dlrm_dist.config import Config
from dlrm_dist.data import criteo, criteo_files
from dlrm_dist.data.criteo_data import CriteoData
from dlrm_dist.data.random_fast import FastDataSpec, RandomFastData
from dlrm_dist.data.random_fast_torch import TorchRandomFastData
from dlrm_dist.data.reference_random import RandomDataSpec, ReferenceRandomData


def make_data(
    cfg: Config,
    arch: Arch,
    rs: np.random.RandomState,
    eval_set: bool = False,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
):
    """This rank's slice of each global batch of the train (or eval) data.

    `random`: the reference's generator, drawn from rs (the reference's global stream,
    shared with the initial weights and the other set) whole on every rank. `random-fast`:
    each rank draws only its slice; batch b depends only on the seed, the set and b; with a
    CUDA `device`, drawn there by the same generator in torch (the same numbers, no host
    cores in the way of a GPU's rate); test_num_batches sizes its test split.
    `dataset`: Criteo's train (or test) split, shuffled as the reference (drawn from rs)."""
    d = cfg.data
    seed = cfg.train.numpy_rand_seed
    batch = d.test_mini_batch_size if eval_set and d.test_mini_batch_size > 0 else None
    batch = batch or d.mini_batch_size
    if d.generation == "dataset":  # the reference limits only the training batches
        split, limit = ("test", 0) if eval_set else ("train", d.num_batches)
        directory = criteo_files.processed_dir(d)
        return CriteoData(
            directory,
            split,
            batch,
            rank,
            world_size,
            d.data_randomize,
            seed,
            limit,
            d.multi_hot_sizes,
            d.multi_hot_distribution,
            rs,
            d.memory_map,
        )
    common = dict(
        dense_features=arch.m_den,
        table_sizes=arch.ln_emb,
        num_indices_per_lookup=d.num_indices_per_lookup,
        fixed=d.num_indices_per_lookup_fixed,
        dist=d.rand_data_dist,
        rmin=d.rand_data_min,
        rmax=d.rand_data_max,
        mu=d.rand_data_mu,
        sigma=d.rand_data_sigma,
        round_targets=d.round_targets,
    )
    if d.generation == "random-fast":
        extra = dict(zipf_exponent=d.zipf_exponent, labels=d.synthetic_labels)
        spec = FastDataSpec(**common, **extra, multi_hot_sizes=tuple(d.multi_hot_sizes))
        batches = d.test_num_batches if eval_set and d.test_num_batches > 0 else d.num_batches
        args = (spec, seed, batches, batch, rank, world_size, d.data_size, int(eval_set))
        if device is not None and device.type == "cuda" and d.draw_on == "device":
            return TorchRandomFastData(*args, device=device)
        return RandomFastData(*args)
    spec = RandomDataSpec(**common)
    return ReferenceRandomData(spec, rs, seed, d.data_size, d.num_batches, batch, rank, world_size)


def dataset_tables(cfg: Config, rank: int) -> Config:
    """`dataset`: preprocess first when the processed data is missing (rank 0; the others
    wait), then the tables' rows and the 13 dense features come from the data."""
    if cfg.data.generation != "dataset":
        return cfg
    meta = criteo.ensure_processed(cfg.data, cfg.train.numpy_rand_seed, rank)
    sizes = criteo_files.table_sizes(meta["counts"], cfg.model.embedding_sizes)
    dense = criteo_files.dense_features(cfg.data.dense_features)
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, embedding_sizes=sizes),
        data=dataclasses.replace(cfg.data, dense_features=dense),
    )


def usable_batches(data, world_size: int) -> int:
    """Batches every rank can take an equal slice of: a last partial batch that the world
    size does not divide is left out (torchrec's all-to-alls want equal local batches)."""
    n = len(data)
    if world_size > 1 and n and data.batch_size(n - 1) % world_size:
        return n - 1
    return n


def iter_from(data, start: int) -> Iterator:
    """data's batches from index start. A source without `iter_from` is read from its
    first batch and the ones before start dropped: right only when batch b depends on b
    alone (not for a stream shared with other draws, like the reference's)."""
    if start == 0:
        return iter(data)
    if hasattr(data, "iter_from"):
        return data.iter_from(start)
    return itertools.islice(data, start, None)


def on_device(batch, device: torch.device) -> bool:
    """Whether a TorchRec Batch's tensors all live on `device` already: then `Batch.to`
    would only rebuild the Batch and its KJT around the same tensors (~9 us a step of
    config B on the CPU, this check ~1 us)."""
    kjt = batch.sparse_features
    return all(
        t.device == device
        for t in (batch.dense_features, batch.labels, kjt.values(), kjt.lengths())
    )


class EpochBatches:
    """The epochs' batches in order from `start` = (epoch, batch), each checked (`check`,
    before FBGEMM sees it) and moved to the device, with the time spent waiting for them
    in `wait` (data generation): the pipeline pulls batches itself, so we time here."""

    def __init__(
        self,
        data,
        nbatches: int,
        nepochs: int,
        device: torch.device,
        start: tuple[int, int] = (0, 0),
        check: Callable | None = None,
    ) -> None:
        self.device, self.wait, self.check = device, 0.0, check

        def epoch(e: int):  # from batch start[1] of epoch start[0] (a resumed run) on
            first = start[1] if e == start[0] else 0
            # islice: a batch past nbatches (a partial one the ranks cannot split) is not drawn
            return itertools.islice(iter_from(data, first), max(0, nbatches - first))

        self._it = itertools.chain.from_iterable(epoch(e) for e in range(start[0], nepochs))

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            batch = next(self._it)
            if self.check is not None:
                self.check(batch)
            return batch if on_device(batch, self.device) else batch.to(self.device)
        finally:
            self.wait += time.perf_counter() - start
