"""bench/queue.py in miniature, so that it cannot rot unnoticed: sane figures, no targets."""

from __future__ import annotations

import math

import pytest
from bench.queue import measure, table

from tests.conftest import kafka_bootstrap

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.mark.parametrize("mode", ["ordered", "queue"])
async def test_the_queue_bench_measures_both_modes(mode: str) -> None:
    """One instance in each mode gives positive rates and latencies, and a table row."""
    figures = await measure(kafka_bootstrap(), mode, 1, seconds=1.0, events=200)
    assert figures.calls_per_s > 0 and figures.events_per_s > 0
    assert 0 < figures.p50_ms <= figures.p99_ms and not math.isnan(figures.p99_ms)
    assert f"| {mode} | 1 |" in table([figures])
