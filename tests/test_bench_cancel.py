"""bench.cancel in miniature, so that it cannot rot unnoticed: it runs, every cancel
reaches its handler, and the figures are sane (never that the target is met)."""

from __future__ import annotations

import math

import pytest
from bench import cancel

from tests.conftest import kafka_bootstrap

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.mark.parametrize("kafka_client", ["aiokafka", "confluent"])
async def test_the_cancel_benchmark_measures_every_cancel(kafka_client: str) -> None:
    """Five cancels on a real `kourier run` service: each stopped its handler, and the
    latencies and round trips are finite and positive."""
    figures = await cancel.measure(kafka_bootstrap(), n=5, warmup=1, kafka_client=kafka_client)
    assert figures.cancels == 5
    for value in (figures.cancel_p50_ms, figures.cancel_p99_ms, figures.round_trip_p99_ms):
        assert math.isfinite(value) and value > 0
    assert figures.cancel_p50_ms <= figures.cancel_p99_ms <= figures.cancel_max_ms
    assert figures.target_p99_ms == pytest.approx(100 + figures.round_trip_p99_ms)
