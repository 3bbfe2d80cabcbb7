"""`python -m dlrm_dist.train`: the reference DLRM trainer's flags, on TorchRec.

One script for 1 or N processes: rank, world size and device come from the torchrun
environment; run directly, it brings up a one-rank group and takes the same path:
`setup` (data, model, plan, shard, optimizer, checkpoint) then `Trainer.train`, the loop.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dlrm_dist import console, distributed, elastic, failures, inference, report, scopes
from dlrm_dist.arch import Arch, derive_arch, parameter_order
from dlrm_dist.checkpoint import CheckpointManager, TrainState, describe_resume
from dlrm_dist.cli import parse_args
from dlrm_dist.config import Config
from dlrm_dist.data.batch_check import BatchCheck
from dlrm_dist.data.sources import EpochBatches, dataset_tables, make_data, usable_batches
from dlrm_dist.errors import ConfigError, DlrmDistError, PeerFailureError
from dlrm_dist.evaluation import evaluate, teacher_metrics, threshold_reached
from dlrm_dist.initial_weights import reference_init
from dlrm_dist.lr_policy import LRPolicy
from dlrm_dist.metrics import MetricsWriter, Profiler, numbered_run_dir
from dlrm_dist.model import DLRMTrain
from dlrm_dist.threads import Choice


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
    teacher: dict[str, float] | None = None  # planted labels: the teacher's own test metrics


def build(cfg: Config, env: distributed.DistEnv, arch: Arch, rs: np.random.RandomState):
    """Model with the reference's initial weights, sharded; and its optimizer."""
    tables = cfg.model.weight_init == "reference"  # else DMP's own per-shard draw stays
    weights = reference_init(rs, arch, cfg.train.numpy_rand_seed, tables=tables)
    model = DLRMTrain(arch, cfg.model, device="meta")
    model.device_type = env.device.type
    plan = distributed.build_plan(model, cfg, env)
    dmp = distributed.shard(model, plan, env, cfg.optim)
    distributed.load_full_weights(dmp, weights)
    optimizer = distributed.build_optimizer(dmp, cfg.optim)
    return dmp, optimizer


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

    def step(self, batches: EpochBatches) -> torch.Tensor:
        """One step on the next batch; its (detached) loss."""
        if self.pipeline is not None:
            return self.pipeline.progress(batches)[0]
        batch = next(batches)
        self.optimizer.zero_grad()
        loss, _ = self.model(batch)
        loss.backward()
        self.optimizer.step()
        return loss

    def evaluate(self, data, device: torch.device, num_batches: int) -> dict[str, float]:
        """Evaluation needs the model's own forward back: the pipeline swaps in one that
        reads its prefetched batches. Its in-flight batches wait and resume after."""
        if self.pipeline is None:
            return evaluate(self.model, data, device, num_batches)
        model = self.pipeline.detach()
        try:
            return evaluate(model, data, device, num_batches)
        finally:
            self.pipeline.attach(model)


@dataclass
class Run:
    """Everything a training run needs, built by `setup`: the model sharded, its optimizer
    and checkpoints, this rank's data, and where a resumed run starts (`state`)."""

    cfg: Config
    env: distributed.DistEnv
    arch: Arch
    train_data: object
    test_data: object
    nbatches: int  # batches per epoch every rank trains on
    ntest: int
    model: torch.nn.Module  # DistributedModelParallel(DLRMTrain)
    optimizer: object
    ckpt: CheckpointManager
    state: TrainState
    names: list[str]  # parameter names in the reference's order

    def close(self) -> None:
        """A save still in flight finishes; the data worker (if any) ends."""
        try:
            self.ckpt.close()
        finally:
            getattr(self.train_data, "close", lambda: None)()

    @property
    def eval_batches(self) -> int:
        """Batches an evaluation reads: as many as training has (the reference's), all of
        the test split on real data."""
        return (
            self.ntest if self.cfg.data.generation == "dataset" else min(self.nbatches, self.ntest)
        )


def agreed_data(cfg: Config, arch: Arch, rs: np.random.RandomState, env, out: console.Reporter):
    """This rank's train and test data and the batches per epoch all ranks train on."""
    if cfg.train.test_freq > 0 and cfg.data.test_mini_batch_size > 0:
        distributed.local_batch(cfg.data.test_mini_batch_size, env, "--test-mini-batch-size")
    train_data = make_data(cfg, arch, rs, False, env.rank, env.world_size, env.device)
    test_data = make_data(cfg, arch, rs, True, env.rank, env.world_size, env.device)
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
    return train_data, test_data, nbatches, ntest


def setup(
    cfg: Config, env: distributed.DistEnv, out: console.Reporter, draw_ahead: bool = False
) -> Run:
    """Data, then the model with the reference's initial weights, planned and sharded,
    its optimizer, and the checkpoint to resume from (if any), in the reference's order
    of draws from its numpy stream. `draw_ahead`: the training batches of the reference's
    random data are drawn by a worker process, one ahead (started here, so that it comes
    up while the model is built; `Run.close` ends it)."""
    cfg = dataset_tables(cfg, env.rank)
    arch = derive_arch(cfg.model, cfg.data.dense_features)
    rs = np.random.RandomState(cfg.train.numpy_rand_seed)  # the reference's np.random
    torch.manual_seed(cfg.train.numpy_rand_seed)
    distributed.local_batch(cfg.data.mini_batch_size, env)
    train_data, test_data, nbatches, ntest = agreed_data(cfg, arch, rs, env, out)
    if draw_ahead and hasattr(train_data, "draw_ahead"):
        train_data.draw_ahead()
    if cfg.train.debug_mode:
        out.arch(arch)
        out.data(train_data)  # draws the batches before the model, as the reference
    model, optimizer = build(cfg, env, arch, rs)
    ckpt = CheckpointManager(cfg, model, optimizer, rs, env.rank, env.world_size)
    state = ckpt.load()  # fresh unless resuming; a resume puts rs back where it was
    names = parameter_order(arch)
    return Run(cfg, env, arch, train_data, test_data, nbatches, ntest, model, optimizer, ckpt,
               state, names)  # fmt: skip


class Trainer:
    """The training loop over a `Run`: steps, log lines, evaluations at --test-freq, the
    MLPerf stop thresholds, checkpoints when due; the phase it is in for failure lines."""

    def __init__(self, r: Run, out: console.Reporter, phase: failures.Phase) -> None:
        self.r, self.out, self.phase = r, out, phase
        cfg = r.cfg
        o = cfg.optim
        self.lr = LRPolicy(
            r.optimizer, o.lr_num_warmup_steps, o.lr_decay_start_step, o.lr_num_decay_steps
        )
        self.stepper = Stepper(r.model, r.optimizer, cfg, r.env)
        self.result = RunResult(pipelined=self.stepper.pipelined)
        start = (r.state.epoch, r.state.batch)
        check = None  # a source in range by construction needs no check (its in_range)
        if not getattr(r.train_data, "in_range", False):
            check = BatchCheck(list(r.train_data.keys), r.arch.ln_emb, r.state.step)
        self.batches = EpochBatches(
            r.train_data, r.nbatches, cfg.train.nepochs, r.env.device, start, check
        )
        self.best_acc = r.state.best_accuracy

    def positions(self):
        """(epoch, batch) of every step still to train, from where a resumed run stopped."""
        first = self.r.state
        for epoch in range(first.epoch, self.r.cfg.train.nepochs):
            for j in range(first.batch if epoch == first.epoch else 0, self.r.nbatches):
                yield epoch, j

    def train(self) -> RunResult:
        r, out, t = self.r, self.out, self.r.cfg.train
        if t.debug_mode:
            out.parameters("initial", distributed.gather_full_weights(r.model, r.names), r.names)
        self.result.teacher = self.known_answer()
        total = r.nbatches * t.nepochs
        out.start(total - min(r.state.epoch * r.nbatches + r.state.batch, total), r.env, r.cfg)
        step, state = r.state.step, r.state
        with Profiler(r.cfg.metrics, r.env.rank) as profiler:
            for epoch, j in self.positions():
                step += 1
                self.step(step, j)
                profiler.step()
                last = j + 1 == r.nbatches
                test = t.test_freq > 0 and ((j + 1) % t.test_freq == 0 or last)
                if (j + 1) % t.print_freq == 0 or last or test:
                    out.log_train(j + 1, r.nbatches, epoch)
                stop = self.evaluate(step, j, epoch) if test else ""
                following = (epoch, j + 1) if j + 1 < r.nbatches else (epoch + 1, 0)
                state = TrainState(step, *following, best_accuracy=self.best_acc)
                self.phase.enter(f"the checkpoint of step {step}")
                r.ckpt.save(state)  # when due
                if stop:
                    break
            self.phase.enter(f"the last checkpoint (step {step})")
            r.ckpt.save(state, last=True)
        return self.finish()

    def step(self, step: int, j: int) -> None:
        """Train step `step` on batch j of its epoch; log its loss and times."""
        t0, wait0 = time.perf_counter(), self.batches.wait
        lr = self.lr.set_step(step)
        self.phase.enter(f"step {step} (its all-to-alls and all-reduces)", step)
        value = distributed.global_mean(self.stepper.step(self.batches))
        failures.check_loss(value, step)  # before this state can be saved
        waited = self.batches.wait - wait0
        self.result.losses.append(value)
        compute = time.perf_counter() - t0 - waited
        self.out.iteration(value, self.r.train_data.batch_size(j), waited, compute, lr)

    def evaluate(self, step: int, j: int, epoch: int) -> str:
        """Evaluate after step `step`; the MLPerf threshold it reached ("" if none)."""
        r, started = self.r, time.perf_counter()
        self.phase.enter(f"the evaluation after step {step}")
        metrics = self.stepper.evaluate(r.test_data, r.env.device, r.eval_batches)
        self.best_acc = max(self.best_acc, metrics["accuracy"])
        self.result.evals.append(metrics)
        self.out.log_eval(j + 1, r.nbatches, epoch, metrics, self.best_acc)
        self.out.eval_seconds += time.perf_counter() - started
        stop = threshold_reached(r.cfg.train, metrics, self.best_acc)
        if stop:
            self.out.print(f"MLPerf testing {stop} threshold reached, stop training")
        return stop

    def known_answer(self) -> dict[str, float] | None:
        """Planted labels, evaluated: the teacher's own metrics on the evaluation batches
        (the best any model can do there), printed and recorded; else None."""
        r = self.r
        if r.cfg.data.synthetic_labels != "planted" or r.cfg.train.test_freq <= 0:
            return None
        self.phase.enter("the planted teacher's test metrics")
        metrics = teacher_metrics(r.test_data, r.env.device, r.eval_batches)
        samples = sum(r.test_data.batch_size(b) for b in range(r.eval_batches))
        self.out.teacher(metrics, samples)
        return metrics

    def finish(self) -> RunResult:
        r, result = self.r, self.result
        self.phase.enter("the final weights")
        result.samples, result.seconds = self.out.finish()
        result.data_seconds = self.out.wait
        m = r.cfg.metrics
        plots = []
        if m.plots and m.run_dir and r.env.rank == 0:
            plots = sorted(path.name for path in report.write_report(Path(m.run_dir))[1])
        self.out.summary(result.evals, result.teacher, plots)
        result.final_weights = distributed.gather_full_weights(r.model, r.names)
        if r.cfg.train.debug_mode:
            self.out.parameters("updated", result.final_weights, r.names)
        return result


def run(cfg: Config) -> RunResult:
    """Train with cfg in this process (one rank, or one of torchrun's). A process group
    the caller already started is used and left open. A failure torch raises that is
    ours to explain (a dead peer, a NaN output) comes out as a DlrmDistError."""
    owns_group = not distributed.is_initialized()
    phase = failures.Phase("the other ranks to start")
    t, rank = cfg.train, int(os.environ.get("RANK", "0"))
    try:
        env = distributed.init_distributed(t.use_gpu, t.dist_backend, t.dist_timeout)
        phase.enter("the other ranks to plan and shard the model")
        try:
            return _run(cfg, env, phase)
        finally:
            if owns_group:
                distributed.close_distributed()
    except Exception as exc:
        ours = failures.translate(exc, phase, rank, t.dist_timeout)
        if ours is None:
            raise
        raise ours from exc


def run_dir(cfg: Config, env: distributed.DistEnv) -> Config:
    """cfg with the run directory this run writes: --numbered-run-dir makes a new
    <run-dir>/NNN (rank 0, the others told which)."""
    m = cfg.metrics
    if not (m.run_dir and m.numbered_run_dir):
        return cfg
    path = str(numbered_run_dir(m.run_dir)) if env.rank == 0 else None
    path = distributed.from_rank0(path)
    return dataclasses.replace(cfg, metrics=dataclasses.replace(m, run_dir=path))


def wants_draw_ahead(cfg: Config) -> bool:
    """Whether training would draw its batches in a worker (dlrm_dist.data.draw_ahead):
    the reference's random data, not --debug-mode (which prints the draws), not
    --inference-only, and not --draw-ahead=false. It does when the rank has a core to
    spare (dlrm_dist.threads)."""
    t = cfg.train
    return (
        t.draw_ahead
        and cfg.data.generation == "random"
        and not t.debug_mode
        and not cfg.inference.inference_only
    )


def _run(cfg: Config, env: distributed.DistEnv, phase: failures.Phase) -> RunResult:
    scopes.install()  # profiler scopes cost nothing while no profiler runs
    threads = distributed.set_threads(env, cfg.train.threads, helper=wants_draw_ahead(cfg))
    cfg = run_dir(cfg, env)
    distributed.set_tf32(env, cfg.train.tf32)
    metrics = MetricsWriter(cfg.metrics.run_dir, env.rank, dataclasses.asdict(cfg))
    with metrics, console.Reporter(cfg, env.rank, threads.threads, metrics) as out:
        announce(cfg, env, out, threads)
        if cfg.metrics.run_dir:
            out.run_dir(cfg.metrics.run_dir, cfg.metrics.plots)
        r = setup(cfg, env, out, draw_ahead=threads.helper)
        try:
            if cfg.inference.inference_only:  # evaluate what was resumed: no training, saving
                evals = inference.run(cfg, env, r.model, r.arch, r.names, r.test_data, r.ntest)
                return RunResult(evals=evals)
            return Trainer(r, out, phase).train()
        finally:
            r.close()  # a save still in flight finishes before the process group goes


def announce(cfg: Config, env: distributed.DistEnv, out: console.Reporter, threads: Choice) -> None:
    """The first line: the threads chosen for this machine and why; under torchrun, first
    the start (an elastic job's restarts too): the world size, the local batch, where it
    resumes. A global batch this world cannot split is one line first, on every rank
    alike (no rank left waiting)."""
    distributed.local_batch(cfg.data.mini_batch_size, env)
    start = elastic.Start.from_env()
    if start.under_torchrun:
        where = describe_resume(cfg) if env.rank == 0 else ""
        line = elastic.start_line(start, env.world_size, cfg.data.mini_batch_size, where)
        out.print(f"{line}; {threads.summary()}")
    else:
        out.print(threads.line())


def main(argv: list[str] | None = None) -> int:
    console.quiet_libraries()
    rank = int(os.environ.get("RANK", "0"))
    try:
        run(parse_args(argv))
    except DlrmDistError as exc:
        # every rank of a job raises the same ConfigError (config checks are the same
        # everywhere, and a planning failure is broadcast): one line, from rank 0; what
        # only one rank saw (a bad batch, a dead peer): from that rank
        if rank == 0 or exc.one_rank:
            print(f"ERROR: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("ERROR: interrupted", file=sys.stderr)
        return 130
    return 0


def exit_with(code: int) -> None:
    """Leave the process with main's status. After a peer failure the broken process
    group's threads can abort the interpreter's shutdown (SIGABRT, 'terminate called
    without an active exception', instead of status 3), so then stdout and stderr are
    flushed and the process ends without that shutdown."""
    if code == PeerFailureError.exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_with(main())
