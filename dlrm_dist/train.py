"""`python -m dlrm_dist.train`: the reference DLRM trainer's flags, on TorchRec.

One script for 1 or N processes: rank, world size and device come from the torchrun
environment; run directly, it brings up a one-rank group and takes the same path.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from dlrm_dist import console, distributed, failures, inference
from dlrm_dist.checkpoint import CheckpointManager, TrainState
from dlrm_dist.cli import parse_args
from dlrm_dist.config import Config, ConfigError
from dlrm_dist.data import criteo
from dlrm_dist.data.criteo_data import CriteoData
from dlrm_dist.data.random_fast import FastDataSpec, RandomFastData
from dlrm_dist.data.reference_random import RandomDataSpec, ReferenceRandomData
from dlrm_dist.init import reference_init
from dlrm_dist.lr_policy import LRPolicy
from dlrm_dist.metrics import MetricsWriter, Profiler
from dlrm_dist.model import Arch, DLRMTrain, derive_arch, parameter_order


@dataclass
class RunResult:
    """What a run produced; `final_weights` only on rank 0."""

    losses: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0  # training, evaluation excluded
    data_seconds: float = 0.0  # of which waiting for batches (data generation)
    final_weights: dict[str, np.ndarray] | None = None
    pipelined: bool = False  # trained through TrainPipelineSparseDist


def make_data(
    cfg: Config,
    arch: Arch,
    rs: np.random.RandomState,
    eval_set: bool = False,
    rank: int = 0,
    world_size: int = 1,
):
    """This rank's slice of each global batch of the train (or eval) data.

    `random`: the reference's generator, drawn from rs (the reference's global stream,
    shared with the initial weights and the other set) whole on every rank. `random-fast`:
    each rank draws only its slice; batch b depends only on the seed, the set and b.
    `dataset`: the processed Criteo data's train (or test) split, each rank reading its
    slice (`dataset_tables` has preprocessed it and taken the tables from it), its ids
    expanded into bags when multi_hot_sizes are given."""
    d = cfg.data
    seed = cfg.train.numpy_rand_seed
    batch = d.test_mini_batch_size if eval_set and d.test_mini_batch_size > 0 else None
    batch = batch or d.mini_batch_size
    if d.generation == "dataset":  # the reference limits only the training batches
        split, limit = ("test", 0) if eval_set else ("train", d.num_batches)
        directory = criteo.processed_dir(d)
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
        spec = FastDataSpec(
            **common, zipf_exponent=d.zipf_exponent, multi_hot_sizes=tuple(d.multi_hot_sizes)
        )
        return RandomFastData(
            spec, seed, d.num_batches, batch, rank, world_size, d.data_size, int(eval_set)
        )
    spec = RandomDataSpec(**common)
    return ReferenceRandomData(spec, rs, seed, d.data_size, d.num_batches, batch, rank, world_size)


def dataset_tables(cfg: Config, rank: int) -> Config:
    """`dataset`: preprocess first when the processed data is missing (rank 0; the others
    wait), then the tables' rows and the 13 dense features come from the data."""
    if cfg.data.generation != "dataset":
        return cfg
    meta = criteo.ensure_processed(cfg.data, cfg.train.numpy_rand_seed, rank)
    sizes = criteo.table_sizes(meta["counts"], cfg.model.embedding_sizes)
    dense = criteo.dense_features(cfg.data.dense_features)
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, embedding_sizes=sizes),
        data=dataclasses.replace(cfg.data, dense_features=dense),
    )


def threshold_reached(cfg: Config, metrics: dict[str, float], best_acc: float) -> str:
    """The reference's --mlperf-acc-threshold / --mlperf-auc-threshold: which was reached
    ("" if none), so training stops (the accuracy is the best so far, in %)."""
    t = cfg.train
    if t.mlperf_acc_threshold > 0 and 100.0 * best_acc > t.mlperf_acc_threshold:
        return "accuracy"
    if t.mlperf_auc_threshold > 0 and metrics.get("auc", 0.0) > t.mlperf_auc_threshold:
        return "AUC"
    return ""


def usable_batches(data, world_size: int) -> int:
    """Batches every rank can take an equal slice of: a last partial batch that the world
    size does not divide is left out (torchrec's all-to-alls want equal local batches)."""
    n = len(data)
    if world_size > 1 and n and data.batch_size(n - 1) % world_size:
        return n - 1
    return n


def build(cfg: Config, env: distributed.DistEnv, arch: Arch, rs: np.random.RandomState):
    """Model with the reference's initial weights, sharded; and its optimizer."""
    tables = cfg.model.weight_init == "reference"  # else DMP's own per-shard draw stays
    weights = reference_init(rs, arch, cfg.train.numpy_rand_seed, tables=tables)
    model = DLRMTrain(arch, cfg.model, device="meta")
    plan = distributed.build_plan(model, cfg, env)
    dmp = distributed.shard(model, plan, env, cfg.optim)
    distributed.load_full_weights(dmp, weights)
    optimizer = distributed.build_optimizer(dmp, cfg.optim)
    return dmp, optimizer


@torch.no_grad()
def evaluate(model, data, device, num_batches: int) -> dict[str, float]:
    """Loss (sample-weighted mean), accuracy (round(p) == t) and, for 0/1 targets, AUC,
    over the whole evaluation set: every rank's slice, gathered."""
    model.eval()
    preds, targets, total_loss = [], [], 0.0
    for i, batch in enumerate(data):
        if i >= num_batches:
            break
        batch = batch.to(device)
        loss, (_, p) = model(batch)
        total_loss += loss.item() * batch.labels.numel()
        preds.append(p.float())
        targets.append(batch.labels)
    model.train()
    p = distributed.gather_cat(torch.cat(preds)).cpu()
    t = distributed.gather_cat(torch.cat(targets)).cpu()
    out = {
        "loss": distributed.all_sum(total_loss, device) / t.numel(),
        "accuracy": (torch.round(p) == t).float().mean().item(),
    }
    if bool(((t == 0) | (t == 1)).all()) and 0 < t.sum() < t.numel():
        from torchmetrics.functional.classification import binary_auroc

        out["auc"] = binary_auroc(p, t.long()).item()
        # logloss, and normalized entropy: logloss over the entropy of the click rate
        logloss = torch.nn.functional.binary_cross_entropy(p.double(), t.double()).item()
        rate = t.double().mean().item()
        out["logloss"] = logloss
        out["ne"] = logloss / -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    return out


def _iter_from(data, start: int):
    """data's batches from index start. A source without `iter_from` is read from its
    first batch and the ones before start dropped: right only when batch b depends on b
    alone (not for a stream shared with other draws, like the reference's)."""
    if start == 0:
        return iter(data)
    if hasattr(data, "iter_from"):
        return data.iter_from(start)
    return itertools.islice(data, start, None)


class _Batches:
    """The epochs' batches in order, moved to the device, with the time spent waiting
    for them (data generation): the pipeline pulls batches itself, so we time here."""

    def __init__(
        self,
        data,
        nbatches: int,
        nepochs: int,
        device: torch.device,
        start: tuple[int, int] = (0, 0),
        check=None,
    ) -> None:
        self.device, self.wait, self.check = device, 0.0, check

        def epoch(e: int):  # from batch start[1] of epoch start[0] (a resumed run) on
            first = start[1] if e == start[0] else 0
            # islice: a batch past nbatches (a partial one the ranks cannot split) is not drawn
            return itertools.islice(_iter_from(data, first), max(0, nbatches - first))

        self._it = itertools.chain.from_iterable(epoch(e) for e in range(start[0], nepochs))

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            batch = next(self._it)
            if self.check is not None:
                self.check(batch)  # before FBGEMM sees it
            return batch.to(self.device)
        finally:
            self.wait += time.perf_counter() - start


class Stepper:
    """How a training step runs, chosen in one place. TrainPipelineSparseDist overlaps the
    next batch's input all-to-all with this step; it pulls batches ahead, so not for the
    reference's `random` data or debug mode, whose batches are drawn from the stream the
    evaluation data and the printouts share (pulling ahead would reorder the draws).
    Both ways run the same math in the same order: zero_grad (which also hands the lr to
    the fused kernels), forward, backward (the fused optimizers update the tables),
    optimizer step."""

    def __init__(self, model, optimizer, cfg: Config, env: distributed.DistEnv) -> None:
        self.model, self.optimizer = model, optimizer
        self.pipelined = (
            cfg.train.pipeline and cfg.data.generation != "random" and not cfg.train.debug_mode
        )
        self.pipeline = None
        if self.pipelined:
            from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

            # pipeline_postproc: the QR id transform (embeddings.FeatureIds) runs a batch
            # ahead with the input all-to-all
            self.pipeline = TrainPipelineSparseDist(
                model, optimizer, env.device, execute_all_batches=True, pipeline_postproc=True
            )

    def step(self, batches: _Batches) -> torch.Tensor:
        """One step on the next batch; its (detached) loss."""
        if self.pipeline is not None:
            return self.pipeline.progress(batches)[0]
        batch = next(batches)
        self.optimizer.zero_grad()
        loss, _ = self.model(batch)
        loss.backward()
        self.optimizer.step()
        return loss

    def evaluate(self, data, device, num_batches: int) -> dict[str, float]:
        """Evaluation needs the model's own forward back: the pipeline swaps in one that
        reads its prefetched batches. Its in-flight batches wait and resume after."""
        if self.pipeline is None:
            return evaluate(self.model, data, device, num_batches)
        model = self.pipeline.detach()
        try:
            return evaluate(model, data, device, num_batches)
        finally:
            self.pipeline.attach(model)


def train(cfg: Config, env: distributed.DistEnv, out: console.Reporter) -> RunResult:
    cfg = dataset_tables(cfg, env.rank)
    arch = derive_arch(cfg.model, cfg.data.dense_features)
    rs = np.random.RandomState(cfg.train.numpy_rand_seed)  # the reference's np.random
    torch.manual_seed(cfg.train.numpy_rand_seed)
    distributed.local_batch(cfg.data.mini_batch_size, env)
    if cfg.train.test_freq > 0 and cfg.data.test_mini_batch_size > 0:
        distributed.local_batch(cfg.data.test_mini_batch_size, env, "--test-mini-batch-size")
    train_data = make_data(cfg, arch, rs, False, env.rank, env.world_size)
    test_data = make_data(cfg, arch, rs, True, env.rank, env.world_size)
    nbatches = distributed.agree_num_batches(usable_batches(train_data, env.world_size))
    ntest = distributed.agree_num_batches(usable_batches(test_data, env.world_size))
    if len(train_data) == 0:
        raise failures.no_data("the training data holds no samples")
    if nbatches == 0:
        raise ConfigError(
            f"no batch to train on: {train_data.batch_size(0)} sample(s) cannot be split over "
            f"{env.world_size} ranks; raise --data-size or --num-batches"
        )
    if nbatches < len(train_data):
        out.print(
            f"note: training on {nbatches} of {len(train_data)} batches per epoch: "
            f"{env.world_size} ranks cannot split the last "
            f"({train_data.batch_size(len(train_data) - 1)} samples) evenly"
        )
    if cfg.train.debug_mode:
        out.arch(arch)
        out.data(train_data)  # draws the batches before the model, as the reference
    model, optimizer = build(cfg, env, arch, rs)
    ckpt = CheckpointManager(cfg, model, optimizer, rs, env.rank, env.world_size)
    state = ckpt.load()  # fresh unless resuming; a resume puts rs back where it was
    names = parameter_order(arch)
    if cfg.inference.inference_only:  # evaluate what was resumed: no training, no saving
        return RunResult(evals=inference.run(cfg, env, model, arch, names, test_data, ntest))
    if cfg.train.debug_mode:
        out.parameters("initial", distributed.gather_full_weights(model, names), names)
    lr_policy = LRPolicy(
        optimizer,
        cfg.optim.lr_num_warmup_steps,
        cfg.optim.lr_decay_start_step,
        cfg.optim.lr_num_decay_steps,
    )
    result = RunResult()
    stepper = Stepper(model, optimizer, cfg, env)
    profiler = Profiler(cfg.metrics, env.rank)
    result.pipelined = stepper.pipelined
    start = (state.epoch, state.batch)
    check = failures.BatchCheck(list(train_data.keys), arch.ln_emb, state.step)
    batches = _Batches(train_data, nbatches, cfg.train.nepochs, env.device, start, check)
    done = min(state.epoch * nbatches + state.batch, nbatches * cfg.train.nepochs)
    out.start(nbatches * cfg.train.nepochs - done, env, cfg)
    best_acc = state.best_accuracy
    step = state.step
    stop = ""  # an MLPerf threshold reached
    for epoch in range(start[0], cfg.train.nepochs):
        for j in range(start[1] if epoch == start[0] else 0, nbatches):
            t0, wait0 = time.perf_counter(), batches.wait
            step += 1
            lr = lr_policy.set_step(step)
            failures.waiting_for(f"step {step} (its all-to-alls and all-reduces)", step)
            value = distributed.global_mean(stepper.step(batches))
            failures.check_loss(value, step)  # before this state can be saved
            profiler.step()
            waited = batches.wait - wait0
            result.losses.append(value)
            out.iteration(
                value, train_data.batch_size(j), waited, time.perf_counter() - t0 - waited, lr
            )
            last = j + 1 == nbatches
            test = cfg.train.test_freq > 0 and ((j + 1) % cfg.train.test_freq == 0 or last)
            if (j + 1) % cfg.train.print_freq == 0 or last or test:
                out.log_train(j + 1, nbatches, epoch)
            if test:
                eval_start = time.perf_counter()
                failures.waiting_for(f"the evaluation after step {step}")
                # the reference evaluates as many batches as it trains on; real data: all
                limit = ntest if cfg.data.generation == "dataset" else min(nbatches, ntest)
                metrics = stepper.evaluate(test_data, env.device, limit)
                best_acc = max(best_acc, metrics["accuracy"])
                result.evals.append(metrics)
                out.log_eval(j + 1, nbatches, epoch, metrics, best_acc)
                out.eval_seconds += time.perf_counter() - eval_start
                stop = threshold_reached(cfg, metrics, best_acc)
                if stop:
                    out.print(f"MLPerf testing {stop} threshold reached, stop training")
            following = (epoch, j + 1) if j + 1 < nbatches else (epoch + 1, 0)
            state = TrainState(step, *following, best_accuracy=best_acc)
            failures.waiting_for(f"the checkpoint of step {step}")
            ckpt.save(state)  # when due
            if stop:
                break
        if stop:
            break
    failures.waiting_for(f"the last checkpoint (step {step})")
    ckpt.save(state, last=True)
    failures.waiting_for("the final weights")
    profiler.close()
    result.samples, result.seconds = out.finish()
    result.data_seconds = out.wait
    result.final_weights = distributed.gather_full_weights(model, names)
    if cfg.train.debug_mode:
        out.parameters("updated", result.final_weights, names)
    return result


def run(cfg: Config) -> RunResult:
    """Train with cfg in this process (one rank, or one of torchrun's). A process group
    the caller already started is used and left open."""
    owns_group = not torch.distributed.is_initialized()
    failures.waiting_for("the other ranks to start")
    t = cfg.train
    env = distributed.init_distributed(t.use_gpu, t.dist_backend, t.dist_timeout)
    failures.waiting_for("the other ranks to plan and shard the model")
    try:
        threads = distributed.set_threads(env, cfg.train.threads)
        metrics = MetricsWriter(cfg.metrics.run_dir, env.rank, dataclasses.asdict(cfg))
        out = console.Reporter(cfg, rank=env.rank, threads=threads, metrics=metrics)
        return train(cfg, env, out)
    finally:
        if owns_group:
            distributed.close_distributed()


def quiet_libraries() -> None:
    """torch/torchrec warn about internals users cannot act on; keep the log readable."""
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    handler = logging.StreamHandler()
    handler.addFilter(lambda r: r.name.startswith("dlrm_dist") or r.levelno >= logging.ERROR)
    logging.basicConfig(level=logging.ERROR, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("dlrm_dist").setLevel(logging.INFO)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


PEER_FAILED = 3  # main's exit status when a peer rank died or stalled


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    rank, cfg = int(os.environ.get("RANK", "0")), None
    try:
        cfg = parse_args(argv)
        run(cfg)
    except ConfigError as exc:
        # every rank of a job raises the same ConfigError (config checks are the same
        # everywhere, and a planning failure is broadcast): one line, from rank 0;
        # a bad batch only its own rank read: from that rank
        if rank == 0 or getattr(exc, "one_rank", False):
            print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if failures.is_output_failure(exc):
            print(failures.output_failure_line(), file=sys.stderr)
            return 2
        if cfg is None or not failures.is_peer_failure(exc):
            raise
        print(failures.peer_failure_line(rank, cfg.train.dist_timeout, exc), file=sys.stderr)
        return PEER_FAILED
    except KeyboardInterrupt:
        print("ERROR: interrupted", file=sys.stderr)
        return 130
    return 0


def exit_with(code: int) -> None:
    """Leave the process with main's status. After a peer failure the broken process
    group's threads can abort the interpreter's shutdown (SIGABRT, 'terminate called
    without an active exception', instead of status 3), so then stdout and stderr are
    flushed and the process ends without that shutdown."""
    if code == PEER_FAILED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_with(main())
