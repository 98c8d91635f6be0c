"""bench/workers.py in miniature, so that it cannot rot unnoticed: sane figures, no targets."""

from __future__ import annotations

import pytest
from bench.workers import SCENARIOS, measure, table

from tests.conftest import kafka_bootstrap

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(240)]


async def test_the_workers_bench_measures_one_and_two_workers() -> None:
    """One and two workers each give positive rates and CPU times for every scenario,
    both workers of two handle a share of every scenario, and the table compares them."""
    rows = [
        await measure(kafka_bootstrap(), "bare", workers, seconds=0.5, events=200, warmup_s=0.5)
        for workers in (1, 2)
    ]
    for figures in rows:
        assert set(figures.rate) == set(SCENARIOS)
        assert all(rate > 0 for rate in figures.rate.values())
        assert all(cpu["service"] > 0 and cpu["caller"] > 0 for cpu in figures.cpu_us.values())
        assert all(len(shares) == figures.workers for shares in figures.shares.values())
        assert all(min(shares) > 0 for shares in figures.shares.values())
        assert 0 < figures.latency_ms["keyless"][0] <= figures.latency_ms["keyless"][1]
    text = table(rows)
    assert "| bare | none | 2 | keyless |" in text and "x |" in text
