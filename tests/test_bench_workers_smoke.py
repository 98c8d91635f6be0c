"""bench/workers.py in miniature, so that it cannot rot unnoticed: sane figures, no targets."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from bench.workers import SCENARIOS, measure, pin, place, table

from tests.conftest import kafka_bootstrap


@pytest.mark.kafka
@pytest.mark.e2e
@pytest.mark.timeout(240)
async def test_the_workers_bench_measures_one_and_two_workers() -> None:
    """One and two workers each give positive rates for every scenario and CPU times for
    the two-way ones, both workers of two handle a share of every scenario, and the table
    compares them."""
    rows = [
        await measure(kafka_bootstrap(), "bare", workers, seconds=0.5, events=200, warmup_s=0.5)
        for workers in (1, 2)
    ]
    for figures in rows:
        assert set(figures.rate) == set(SCENARIOS)
        assert all(rate > 0 for rate in figures.rate.values())
        # CPU comes from /proc in clock ticks (10 ms): 200 one-way events may take less
        # than a tick in the caller, half a second of 64 calls in flight takes many.
        assert all(cpu["service"] >= 0 and cpu["caller"] >= 0 for cpu in figures.cpu_us.values())
        for scenario in ("keyless", "keyed"):
            assert figures.cpu_us[scenario]["service"] > 0
            assert figures.cpu_us[scenario]["caller"] > 0
        assert all(len(shares) == figures.workers for shares in figures.shares.values())
        assert all(min(shares) > 0 for shares in figures.shares.values())
        assert 0 < figures.latency_ms["keyless"][0] <= figures.latency_ms["keyless"][1]
    text = table(rows)
    assert "| bare | none | 2 | keyless |" in text and "x |" in text


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="pinning needs Linux CPU affinity and 2 CPUs",
)
def test_pinning_apart_puts_the_caller_and_the_service_on_different_cpus() -> None:
    """--pin apart puts this process on the first CPU and a worker on the second."""
    own = os.sched_getaffinity(0)
    cpus = sorted(own)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        place("apart", [child.pid])
        assert os.sched_getaffinity(0) == {cpus[0]}
        assert os.sched_getaffinity(child.pid) == {cpus[1]}
    finally:
        pin(os.getpid(), own)
        child.kill()
        child.wait()
    assert os.sched_getaffinity(0) == own
