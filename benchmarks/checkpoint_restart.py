"""What one restart costs an elastic job: from a lost node to the first step at the smaller
world size.

    python benchmarks/checkpoint_restart.py [--repeats R] [--rdzv-conf CONF ...]

Two torchrun agents on loopback as two nodes (`--nnodes=1:2 --nproc-per-node=1
--max-restarts=3`, c10d rendezvous on a store this script holds, as an external store
would), the tiny test job (tests/common.py, random-fast, table-wise, a checkpoint every 4
steps, --resume auto). The second node's worker stops at step 6 (tests/fault_hooks.py
`stall`), then its agent and worker are SIGKILLed at once. Measured on the test's clock,
seconds after the kill:

- `noticed`: the survivor's agent logs its worker's failure (the worker's collective fails
  on the lost connection);
- `rendezvous`: the survivor's agent logs the new rendezvous complete (torchrun waits for
  the lost node's heartbeat to expire, keep_alive_interval x keep_alive_max_attempt, then
  last_call_timeout for late joiners);
- `first step`: the restarted worker logs its first step (start-up: imports, plan, shard,
  resume from the checkpoint).

Each --rdzv-conf is one setting (default: torchrun's defaults, "", and the test suite's
short one); R repeats each. Agent times come from torchrun's own log timestamps (LOGLEVEL
INFO), converted to this clock.
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script

from tests.common import free_port  # noqa: E402
from tests.dist import test_elastic as elastic_test  # noqa: E402

SHORT = "last_call_timeout=2,keep_alive_interval=1,keep_alive_max_attempt=3"
AGENT_TIME = re.compile(
    r"^[IWE](\d{4}) (\d\d:\d\d:\d\d\.\d+) .*?(failed \(exitcode|Rendezvous complete)",
    re.M,
)


def _agent_events(text: str, offset: float) -> dict[str, float]:
    """First 'failed (exitcode' after the kill and the next 'Rendezvous complete', on the
    test's monotonic clock (offset: monotonic - wall time of day)."""
    found: dict[str, float] = {}
    for _day, clock, what in AGENT_TIME.findall(text):
        h, m, s = clock.split(":")
        wall = int(h) * 3600 + int(m) * 60 + float(s)
        key = "noticed" if what.startswith("failed") else "rendezvous"
        if key == "noticed" or "noticed" in found:
            found.setdefault(key, wall + offset)
    return found


def one(rdzv_conf: str) -> dict[str, float]:
    port = free_port()
    store = dist.TCPStore(
        "127.0.0.1", port, is_master=True, multi_tenant=True,
        timeout=datetime.timedelta(seconds=120),
    )  # fmt: skip
    elastic_test.RDZV = rdzv_conf or "join_timeout=300"
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        argv = [*elastic_test.TINY, f"--checkpoint-dir={d / 'ckpt'}", *elastic_test.CKPT]
        a = elastic_test.Node(d, "a", port, argv)
        b = elastic_test.Node(d, "b", port, argv, fault="stall:any:6")
        try:
            while not (d / "fired").exists():
                time.sleep(0.02)
            now = datetime.datetime.now()
            offset = time.monotonic() - (now.hour * 3600 + now.minute * 60 + now.second
                                         + now.microsecond / 1e6)  # fmt: skip
            b.lose()
            killed = time.monotonic()
            while "Finished training it" not in a.text().partition("dlrm_dist: restart 1")[2]:
                assert a.proc.poll() is None and time.monotonic() - killed < 300, a.text()[-3000:]
                time.sleep(0.02)
            first = time.monotonic() - killed
            a.proc.wait(timeout=120)
            events = _agent_events(a.text(), offset)
        finally:
            a.clean_up()
            b.clean_up()
    del store
    return {
        "noticed": events["noticed"] - killed,
        "rendezvous": events["rendezvous"] - killed,
        "first step": first,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rdzv-conf", action="append", default=None)
    args = parser.parse_args()
    confs = args.rdzv_conf if args.rdzv_conf is not None else ["", SHORT]
    print("| --rdzv-conf | noticed s | rendezvous s | first step at world size 1, s |")
    print("|---|---:|---:|---:|")
    for conf in confs:
        runs = [one(conf) for _ in range(args.repeats)]
        cells = []
        for key in ("noticed", "rendezvous", "first step"):
            values = [r[key] for r in runs]
            cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        print(f"| {conf or '(torchrun defaults)'} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
