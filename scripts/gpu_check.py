"""The GPU machine's one check: environment, every `gpu`-marked test, the GPU benchmark.

    bash scripts/gpu_check.sh OUT_DIR [--smoke] [--budgets env=30,tests=200,benchmark=190]
                                      [--stages env,tests,benchmark]

Runs with the interpreter it is started with (the machine's own torch: nothing is
installed). Each stage runs in its own process group under its own time budget, so a slow
or hung stage is stopped and the next still runs; the budgets add up to 7 minutes, which
leaves a minute of an 8-minute device slot for installing the bundle and its smoke test.
Writes under OUT_DIR: `<stage>.log` for each stage, `gpu_tests.xml` (JUnit), the benchmark's
table (`benchmark.md`) and results (`benchmark.json`), and `summary.json`; prints a
one-screen summary at the end. Exit status 0 only when every stage passed.

--smoke (for a machine without a GPU, and the test suite): the same stages, with the
benchmark's tiny CPU mode and no CUDA required.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {"env": 30, "tests": 200, "benchmark": 190}  # seconds

ENV_PROBE = """
import json, platform, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if info["cuda_available"]:
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpus=torch.cuda.device_count(), hbm_gb=round(p.total_memory / 2**30, 1),
                capability=f"{p.major}.{p.minor}", nccl=torch.distributed.is_nccl_available())
import fbgemm_gpu, torchrec
info.update(torchrec=torchrec.__version__, fbgemm_gpu=getattr(fbgemm_gpu, "__version__", "?"))
import dlrm_dist.train  # the trainer imports on this stack
print(json.dumps(info))
if not info["cuda_available"] and not SMOKE:
    sys.exit("no CUDA device visible to torch")
"""


@dataclass
class Stage:
    name: str
    status: str = "not run"  # passed | failed | timeout | not run
    seconds: float = 0.0
    budget: int = 0
    returncode: int | None = None
    details: dict = field(default_factory=dict)


def run_stage(stage: Stage, cmd: list[str], log: Path) -> None:
    """cmd under stage.budget seconds, its output into log; the whole process group is
    killed at the budget (pytest's and the trainer's children included)."""
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            stage.returncode = proc.wait(timeout=stage.budget)
            stage.status = "passed" if stage.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            stage.status = "timeout"
            out.write(f"\n[gpu_check] stopped at its budget of {stage.budget} s\n")
    stage.seconds = round(time.monotonic() - start, 1)


def junit_counts(path: Path) -> dict:
    """passed/failed/errors/skipped and the failing test ids from pytest's JUnit file."""
    if not path.exists():
        return {}
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failing": []}
    for case in suite.iter("testcase"):
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), None)
        key = {"failure": "failed", "error": "errors", "skipped": "skipped"}.get(outcome, "passed")
        counts[key] += 1
        if outcome in ("failure", "error"):
            counts["failing"].append(f"{case.get('classname')}::{case.get('name')}")
    return counts


def parse_budgets(text: str) -> dict[str, int]:
    budgets = dict(BUDGETS)
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in budgets or not value.isdigit():
            names = ", ".join(BUDGETS)
            raise SystemExit(f"ERROR: --budgets {item!r}: use NAME=SECONDS, NAME one of {names}")
        budgets[name] = int(value)
    return budgets


def stages(out: Path, smoke: bool, budgets: dict[str, int], selected: set[str]) -> list[Stage]:
    py = sys.executable
    result = [Stage(name, budget=budgets[name]) for name in BUDGETS]
    env, tests, bench = result
    if "env" in selected:
        run_stage(env, [py, "-c", f"SMOKE = {smoke}\n{ENV_PROBE}"], out / "env.log")
        lines = (out / "env.log").read_text().splitlines()
        env.details = next((json.loads(x) for x in lines if x.startswith("{")), {})
    if "tests" in selected:
        pytest = [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
        pytest += ["--timeout=150", f"--junitxml={out / 'gpu_tests.xml'}", "tests/gpu"]
        run_stage(tests, pytest, out / "tests.log")
        tests.details = junit_counts(out / "gpu_tests.xml")
    if "benchmark" in selected:
        cmd = [py, "benchmarks/gpu.py", "--out", str(out / "benchmark_runs")]
        cmd += ["--json", str(out / "benchmark.json"), "--table", str(out / "benchmark.md")]
        run_stage(bench, [*cmd, *(["--smoke"] if smoke else [])], out / "benchmark.log")
        if (out / "benchmark.json").exists():
            bench.details = json.loads((out / "benchmark.json").read_text())
    return result


def screen(result: list[Stage], out: Path) -> str:
    env, tests, bench = result
    e = env.details
    lines = [
        f"gpu_check: {out}",
        f"  machine   {e.get('gpu', 'no GPU')} | torch {e.get('torch', '?')} (CUDA "
        f"{e.get('cuda')}) | torchrec {e.get('torchrec', '?')} | fbgemm_gpu "
        f"{e.get('fbgemm_gpu', '?')} | python {e.get('python', '?')}",
    ]
    for s in result:
        lines.append(f"  {s.name:<10}{s.status:<8} {s.seconds:>6.1f} s of {s.budget} s")
    t = tests.details
    if t:
        lines.append(
            f"  tests     {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, "
            f"{t['skipped']} skipped"
        )
        lines += [f"    FAILED {name}" for name in t["failing"][:12]]
    for run in bench.details.get("runs", []):
        lines.append(
            f"  bench     {run['name']:<22} {run['samples_per_s_median']:>12,.0f} samples/s "
            f"({run['samples_per_s_min']:,.0f}-{run['samples_per_s_max']:,.0f}), "
            f"peak {run['peak_gb']:.1f} GB"
        )
    lines += [f"  note      {n}" for n in bench.details.get("notes", [])]
    lines.append(f"  logs      {out}/<stage>.log, summary.json, benchmark.md")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output directory (created)")
    parser.add_argument("--smoke", action="store_true", help="no GPU needed: tiny benchmark")
    parser.add_argument("--budgets", default="", help="NAME=SECONDS,... (env, tests, benchmark)")
    parser.add_argument("--stages", default=",".join(BUDGETS), help="the stages to run")
    args = parser.parse_args(argv)
    budgets = parse_budgets(args.budgets)
    selected = set(filter(None, args.stages.split(",")))
    if not selected <= set(BUDGETS):
        raise SystemExit(f"ERROR: --stages {args.stages}: choose from {', '.join(BUDGETS)}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    result = stages(out, args.smoke, budgets, selected)
    summary = {"smoke": args.smoke, "stages": [asdict(s) for s in result]}
    summary["ok"] = all(s.status == "passed" for s in result if s.name in selected)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(screen(result, out))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
