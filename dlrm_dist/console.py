"""What rank 0 prints: the reference's lines (same text shape), throughput, a progress bar;
and the same numbers to the run's metrics files (dlrm_dist.metrics) when asked.

Only rank 0 prints. The progress bar (on stderr) shows only when that is a terminal, so logs
and pipes get plain lines.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
import warnings

import numpy as np
import torch
from torch._tensor_str import printoptions as torch_printoptions
from tqdm import tqdm

from dlrm_dist.arch import Arch
from dlrm_dist.config import Config
from dlrm_dist.metrics import MetricsWriter, peak_memory_gb


class Reporter:
    def __init__(
        self, cfg: Config, rank: int = 0, threads: int = 1, metrics: MetricsWriter | None = None
    ) -> None:
        self.cfg, self.rank, self.threads = cfg, rank, threads
        self.metrics = metrics or MetricsWriter("", rank)
        self.world, self.device, self.step, self.lr = 1, torch.device("cpu"), 0, 0.0
        self.bar: tqdm | None = None
        self._reset_window()
        self.window_rates: list[float] = []
        self.samples = 0
        self.wait = 0.0
        self.eval_seconds = 0.0
        self.begin = self.created = time.perf_counter()

    def _reset_window(self) -> None:
        self.w_loss = self.w_samples = self.w_iters = 0
        self.w_compute = self.w_wait = 0.0
        self.w_start = time.perf_counter()

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """The progress bar and the metrics files, also when the run failed."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.metrics.close()

    def print(self, *lines: object) -> None:
        if self.rank != 0:
            return
        for line in lines:
            if self.bar is not None:
                self.bar.write(str(line))
            else:
                print(line, flush=True)

    # --- the reference's debug-mode prints -------------------------------------------
    def arch(self, a: Arch) -> None:
        self.print(
            "model arch:",
            f"mlp top arch {len(a.ln_top) - 1} layers, with input to output dimensions:",
            np.array(a.ln_top),
            "# of interactions",
            a.num_int,
            f"mlp bot arch {len(a.ln_bot) - 1} layers, with input to output dimensions:",
            np.array(a.ln_bot),
            "# of features (sparse and dense)",
            a.num_fea,
            "dense feature size",
            a.m_den,
            "sparse feature size",
            a.m_spa,
            f"# of embeddings (= # of sparse features) {len(a.ln_emb)}, "
            f"with dimensions {a.m_spa}x:",
            np.array(a.ln_emb),
        )

    def data(self, data) -> None:
        """Draws every batch of `data` (all ranks must, to consume the stream alike)."""
        self.print("data (inputs and targets):")
        with torch_printoptions(precision=4):
            for j in range(len(data)):
                raw = data.raw(j)
                lengths = torch.IntTensor(raw.lengths.tolist())
                self.print(
                    f"mini-batch: {j}",
                    torch.from_numpy(raw.dense),
                    lengths,
                    [torch.from_numpy(ix) for ix in raw.indices()],
                    torch.from_numpy(raw.targets),
                )

    def parameters(self, which: str, weights, names: list[str]) -> None:
        if self.rank != 0:
            return
        self.print(f"{which} parameters (weights and bias):")
        with np.printoptions(precision=self.cfg.train.print_precision):
            for name in names:
                self.print(weights[name])

    # --- training progress ------------------------------------------------------------
    def start(self, total_iters: int, env, cfg: Config) -> None:
        world = self.world = env.world_size
        self.device = env.device
        self.print(
            f"dlrm_dist: {world} rank(s), {env.backend} on {env.device.type}, "
            f"{self.threads} thread(s) per rank; global batch {cfg.data.mini_batch_size} "
            f"(local {cfg.data.mini_batch_size // world}); "
            f"embeddings {cfg.sharding.sharding_type}",
            "time/loss/accuracy (if enabled):",
        )
        show = cfg.train.progress_bar and sys.stderr.isatty() and self.rank == 0
        if show:
            self.bar = tqdm(total=total_iters, unit="it", dynamic_ncols=True, leave=False)
        self.begin = time.perf_counter()
        self._reset_window()

    def iteration(self, loss: float, n: int, wait: float, compute: float, lr: float) -> None:
        self.w_loss += loss * n
        self.w_samples += n
        self.w_iters += 1
        self.w_compute += compute
        self.w_wait += wait
        self.samples += n
        self.wait += wait
        self.lr = lr
        self.step += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.5f}", refresh=False)

    def log_train(self, it: int, nbatches: int, epoch: int) -> None:
        elapsed = time.perf_counter() - self.w_start
        rate = self.w_samples / elapsed if elapsed > 0 else 0.0
        self.window_rates.append(rate)
        ms = 1000.0 * self.w_compute / self.w_iters if self.cfg.train.print_time else -1
        wall = f" ({time.strftime('%H:%M')})" if self.cfg.train.print_wall_time else ""
        loss = self.w_loss / self.w_samples
        wait = 100.0 * self.w_wait / elapsed if elapsed > 0 else 0.0
        mem = peak_memory_gb(self.device)
        step_ms = 1000.0 * elapsed / max(self.w_iters, 1)
        # the reference's line (its ms/it only with --print-time), then ours: per-rank
        # rate, wall ms per step (data included), lr, data wait, peak memory
        self.print(
            f"Finished training it {it}/{nbatches} of epoch {epoch}, {ms:.2f} ms/it, "
            f"loss {loss:.6f}, {rate:.0f} samples/s{wall} ({rate / self.world:.0f}/rank, "
            f"{step_ms:.2f} ms/step, lr {self.lr:.4g}, data {wait:.1f} %, "
            f"peak mem {mem:.2f} GB)"
        )
        self.metrics.write(
            "train",
            self.step,
            {
                "epoch": epoch,
                "loss": loss,
                "lr": self.lr,
                "samples_per_s": rate,
                "samples_per_s_per_rank": rate / self.world,
                "ms_per_step": step_ms,
                "data_wait_pct": wait,
                "peak_mem_gb": mem,
            },
        )
        self._reset_window()

    def log_eval(self, it: int, nbatches: int, epoch: int, m: dict, best_acc: float) -> None:
        auc = f", auc {m['auc']:.4f}" if "auc" in m else ""
        self.print(
            f"Testing at - {it}/{nbatches} of epoch {epoch},",
            f" loss {m['loss']:.6f}, accuracy {m['accuracy'] * 100:3.3f} %, "
            f"best {best_acc * 100:3.3f} %{auc}",
        )
        self.metrics.write("eval", self.step, {"epoch": epoch, **m, "best_accuracy": best_acc})
        self._reset_window()

    def teacher(self, m: dict[str, float], samples: int) -> None:
        """Planted labels: the teacher's own metrics on the test split, the best possible."""
        self.print(
            f"planted labels: the teacher's own test AUC {m['auc']:.4f}, log loss "
            f"{m['logloss']:.6f} on {samples} test samples (the best any model can do)"
        )
        self.metrics.write("teacher", 0, m)

    def run_dir(self, path: str, plots: bool) -> None:
        """Where this run's metrics go (a numbered run directory is new each run)."""
        then = "; plots at the end" if plots else ""
        self.print(f"metrics: {path} (metrics.jsonl, TensorBoard events in tensorboard/{then})")

    def finish(self) -> tuple[int, float]:
        """Record the run's totals and close the metrics files; returns samples and
        training seconds (evaluation excluded). `summary` prints them."""
        self.seconds = seconds = time.perf_counter() - self.begin - self.eval_seconds
        self.wall = time.perf_counter() - self.created
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.metrics.write(
            "summary",
            self.step,
            {
                "samples": self.samples,
                "seconds": seconds,
                "samples_per_s": self.samples / max(seconds, 1e-9),
                "world_size": self.world,
                "eval_seconds": self.eval_seconds,
            },
        )
        self.metrics.close()
        return self.samples, seconds

    def summary(self, evals: list[dict], teacher: dict | None, plots: list[str]) -> None:
        """The run's last lines: test AUC first and last (beside the planted teacher's,
        the best possible), where the metrics and plots went, then the `Done:` line."""
        scored = [m for m in evals if "auc" in m]
        if scored:
            first, last = scored[0], scored[-1]
            best = ""
            if teacher:
                best = (
                    f"; best possible {teacher['auc']:.4f} (log loss {teacher['logloss']:.4f}), "
                    "the planted teacher's"
                )
            self.print(
                f"Summary: test AUC {first['auc']:.4f} at the first evaluation, "
                f"{last['auc']:.4f} at the last (log loss {last['logloss']:.4f}){best}"
            )
        m = self.cfg.metrics
        if m.run_dir:
            fresh = "a new numbered directory each run: " if m.numbered_run_dir else ""
            shown = f"; plots {', '.join(plots)}" if plots else ""
            self.print(f"Metrics: {m.run_dir} ({fresh}metrics.jsonl, tensorboard/{shown})")
        seconds, rates = self.seconds, self.window_rates or [0.0]
        self.print(
            f"Done: {self.samples} samples in {seconds:.2f} s, "
            f"{self.samples / max(seconds, 1e-9):.0f} samples/s end to end "
            f"(per log window: median {statistics.median(rates):.0f}, "
            f"min {min(rates):.0f}, max {max(rates):.0f}); "
            f"data wait {100.0 * self.wait / max(seconds, 1e-9):.1f} %"
            + (f"; evaluation took {self.eval_seconds:.2f} s more" if self.eval_seconds else "")
            + f"; wall time {self.wall:.1f} s (setup included)"
        )


def quiet_libraries() -> None:
    """torch/torchrec warn about internals users cannot act on; keep the log readable."""
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    handler = logging.StreamHandler()
    handler.addFilter(lambda r: r.name.startswith("dlrm_dist") or r.levelno >= logging.ERROR)
    logging.basicConfig(level=logging.ERROR, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("dlrm_dist").setLevel(logging.INFO)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
