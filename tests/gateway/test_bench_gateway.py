"""bench/gateway.py in miniature, so that the latency benchmark cannot rot unnoticed."""

from __future__ import annotations

import pytest
from bench.gateway import measure, render

from tests.conftest import kafka_bootstrap

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(180)]


async def test_the_gateway_benchmark_runs_and_reports_sane_numbers() -> None:
    """A tiny run times both ways of calling and reports positive latencies."""
    report = await measure(kafka_bootstrap(), calls=20, warmup=2)
    for latencies in (report.direct, report.gateway):
        assert latencies.calls == 20
        assert 0 < latencies.p50 <= latencies.p90 <= latencies.p99
    assert "added by the gateway" in render(report)
