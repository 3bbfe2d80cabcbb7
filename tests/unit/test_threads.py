"""Threads per rank and the OpenMP spin count (dlrm_dist.threads): the arithmetic of the
choice, the /proc/stat reading, and the spin count set before torch loaded."""

from __future__ import annotations

import os

import pytest

from dlrm_dist import threads

STAT = """cpu  900 0 300 5000 100 0 0 0 0 0
cpu0 100 0 50 800 50 0 0 0 0 0
cpu1 800 0 250 4200 50 0 0 0 0 0
cpu2 7 0 0 1 0 0 0 0 0 0
intr 12345
ctxt 999
"""


@pytest.fixture
def cores(monkeypatch):
    def set_cores(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))

    return set_cores


@pytest.mark.parametrize(
    "n, local, busy, want",
    [
        (2, 1, 0.0, 2),  # alone: every core
        (2, 1, 0.3, 2),  # a little noise (a kernel thread) takes no core
        (2, 1, 1.0, 1),  # one busy process on 2 cores: 1 thread, never waiting for a partner
        (2, 1, 2.0, 1),  # every core busy: still one
        (2, 2, 0.0, 1),  # two ranks share the cores
        (4, 2, 1.0, 1),  # 3 free cores over 2 ranks
        (16, 4, 0.0, 4),
        (16, 4, 3.6, 3),  # 4 cores taken, 12 free over 4 ranks
    ],
)
def test_threads_are_the_free_cores_over_the_local_ranks(cores, n, local, busy, want):
    cores(n)
    choice = threads.choose(0, local, busy=busy)
    assert choice.threads == want
    assert f"{n} core(s), {local} local rank(s)" in choice.reason
    assert ("busy elsewhere" in choice.reason) == (busy >= 0.5)


def test_threads_flag_overrides_whatever_the_load(cores):
    cores(2)
    choice = threads.choose(3, 1, busy=2.0)
    assert (choice.threads, choice.reason) == (3, "--threads")
    assert choice.line().startswith("dlrm_dist: 3 thread(s) per rank (--threads; ")


def test_cpu_times_sum_the_named_cpus_idle_and_iowait_idle(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    # cpu0: busy 100 + 50 = 150 of 1000; cpu1: 800 + 250 = 1050 of 5300; the total line skipped
    assert threads.cpu_times({0}, str(stat)) == (150.0, 1000.0)
    assert threads.cpu_times({0, 1}, str(stat)) == (1200.0, 6300.0)
    assert threads.cpu_times({5}, str(stat)) == (0.0, 0.0)


def test_busy_cores_is_the_busy_share_of_the_sampled_cores(monkeypatch):
    samples = iter([(100.0, 1000.0), (250.0, 1200.0)])  # 150 busy of 200 jiffies
    monkeypatch.setattr(threads, "cpu_times", lambda cpus: next(samples))
    assert threads.busy_cores({0, 1}, seconds=0.0) == pytest.approx(2 * 150 / 200)


def test_an_unreadable_stat_counts_no_core_busy(monkeypatch):
    def fail(cpus):
        raise OSError("no /proc")

    monkeypatch.setattr(threads, "cpu_times", fail)
    assert threads.busy_cores({0, 1}, seconds=0.0) == 0.0


def test_the_package_set_the_spin_count_before_torch_loaded():
    # conftest imports dlrm_dist first; CI's environment sets no OpenMP policy of its own
    if "OMP_WAIT_POLICY" in os.environ or os.environ.get("GOMP_SPINCOUNT") != threads.SPINCOUNT:
        assert "(yours)" in threads.configure_openmp()
    else:
        assert threads.configure_openmp() == f"OpenMP spin count {threads.SPINCOUNT}"


@pytest.mark.parametrize(
    "n, local, requested, busy, want",
    [
        (2, 1, 0, 0.0, (1, True)),  # 2 cores: one for the data worker, one for torch
        (4, 1, 0, 0.0, (3, True)),
        (2, 1, 0, 1.0, (1, False)),  # one core free: torch keeps it, no worker
        (2, 2, 0, 0.0, (1, False)),  # two ranks on 2 cores: a core each, no worker
        (8, 2, 0, 0.0, (3, True)),
        (2, 1, 1, 0.0, (1, True)),  # --threads 1 leaves a core spare
        (2, 1, 2, 0.0, (2, False)),  # --threads 2 takes both
    ],
)
def test_a_data_worker_gets_a_core_only_when_the_rank_has_one_to_spare(
    cores, n, local, requested, busy, want
):
    cores(n)
    choice = threads.choose(requested, local, busy=busy, helper=True)
    assert (choice.threads, choice.helper) == want
    assert ("and a data worker per rank" in choice.line()) == want[1]
    assert not threads.choose(requested, local, busy=busy).helper  # none asked for
