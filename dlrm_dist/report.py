"""`python -m dlrm_dist.report RUN_DIR`: plots of a run (loss, AUC, throughput, lr over
steps) as PNG files in RUN_DIR, and a short text summary (printed, and summary.txt)."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from dlrm_dist.metrics import METRICS_FILE, read_metrics

PLOTS = {  # file -> the (record kind, field) series drawn in it
    "loss.png": [("train", "loss"), ("eval", "loss")],
    "auc.png": [("eval", "auc")],
    "throughput.png": [("train", "samples_per_s"), ("train", "samples_per_s_per_rank")],
    "lr.png": [("train", "lr")],
}
# planted labels: the teacher's own metric, the best possible, as a dashed line
BEST = {"loss.png": ("teacher", "logloss"), "auc.png": ("teacher", "auc")}


def series(records: list[dict], kind: str, key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in records if r["kind"] == kind and key in r]
    return [r["step"] for r in rows], [float(r[key]) for r in rows]


def plot(records: list[dict], out_dir: Path) -> dict[Path, list[str]]:
    """Write the PNGs that have data; returns each file's drawn series ("kind key")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: dict[Path, list[str]] = {}
    for name, lines in PLOTS.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        drawn = []
        for kind, key in lines:
            x, y = series(records, kind, key)
            if x:
                ax.plot(x, y, marker="o" if kind == "eval" else None, label=f"{kind} {key}")
                drawn.append(f"{kind} {key}")
        known = series(records, *BEST[name])[1] if name in BEST else []
        if drawn and known:
            label = f"best possible (the planted teacher's {BEST[name][1]})"
            ax.axhline(known[-1], color="gray", linestyle="--", label=label)
        if drawn:
            ax.set_xlabel("step")
            ax.set_ylabel(lines[0][1])
            ax.grid(alpha=0.3)
            ax.legend()
            path = out_dir / name
            fig.tight_layout()
            fig.savefig(path, dpi=100)
            written[path] = drawn
        plt.close(fig)
    return written


def summarize(records: list[dict]) -> str:
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    lines = []
    if train:
        rates = [r["samples_per_s"] for r in train]
        lines.append(
            f"train: {len(train)} log steps up to step {train[-1]['step']}; loss "
            f"{train[0]['loss']:.6f} -> {train[-1]['loss']:.6f}; samples/s median "
            f"{statistics.median(rates):.0f} (min {min(rates):.0f}, max {max(rates):.0f})"
        )
    if evals:
        last = evals[-1]
        best = max(evals, key=lambda r: r.get("auc", r["accuracy"]))
        auc = f", auc {last['auc']:.4f}" if "auc" in last else ""
        lines.append(
            f"eval: {len(evals)} evaluations; last at step {last['step']}: loss "
            f"{last['loss']:.6f}, accuracy {100 * last['accuracy']:.3f} %{auc}; best at step "
            f"{best['step']}"
        )
    for r in records:
        if r["kind"] == "summary":
            lines.append(
                f"run: {r['samples']} samples in {r['seconds']:.2f} s, "
                f"{r['samples_per_s']:.0f} samples/s on {r['world_size']} rank(s)"
            )
    return "\n".join(lines) or "no records"


def write_report(run_dir: Path) -> tuple[str, dict[Path, list[str]]]:
    """The plots (PNG) and summary.txt of the run in run_dir, written there; returns the
    summary text and the plots written (as `plot`)."""
    records = read_metrics(run_dir)
    written = plot(records, run_dir)
    text = summarize(records)
    (run_dir / "summary.txt").write_text(text + "\n")
    return text, written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlrm_dist.report", description=__doc__)
    parser.add_argument("run_dir", help="a --run-dir of dlrm_dist.train")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        print(f"ERROR: {run_dir / METRICS_FILE} does not exist: pass a --run-dir of a run")
        return 2
    text, written = write_report(run_dir)
    print(text)
    print("plots: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
