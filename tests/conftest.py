"""Shared fixtures: settings with per-test topic names, and both transports.

Tests marked ``kafka`` need a real broker, named by KOURIER_BOOTSTRAP_SERVERS (the test
command starts one with scripts/kafka). Outside CI they are skipped when no broker is
named; in CI (CI=true) a missing broker is a failure, never a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest

from kourier.settings import Settings
from kourier.transports.base import Transport
from kourier.transports.memory import MemoryBroker, MemoryTransport

TransportFactory = Callable[[], Transport]


def kafka_bootstrap() -> str:
    servers = os.environ.get("KOURIER_BOOTSTRAP_SERVERS")
    if not servers:
        if os.environ.get("CI") == "true":
            pytest.fail("KOURIER_BOOTSTRAP_SERVERS is not set: CI must run the Kafka tests")
        pytest.skip("no Kafka broker: set KOURIER_BOOTSTRAP_SERVERS (scripts/kafka start)")
    return servers


@pytest.fixture
def bootstrap() -> str:
    return kafka_bootstrap()


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture(
    params=[
        "memory",
        pytest.param("kafka", marks=pytest.mark.kafka),
        pytest.param("confluent", marks=pytest.mark.kafka),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    """The transport under test: in memory, or real Kafka through either client library."""
    return str(request.param)


@pytest.fixture
def settings(backend: str) -> Settings:
    """Settings whose topics and groups no other test uses."""
    base = Settings(
        topic_prefix=unique_prefix(),
        partitions=3,
        reply_partitions=4,
        commit_interval=0.05,
        drain_timeout=5.0,
        default_timeout=10.0,
    )
    if backend in ("kafka", "confluent"):
        client = "aiokafka" if backend == "kafka" else "confluent"
        return base.replace(bootstrap_servers=kafka_bootstrap(), kafka_client=client)
    return base


@pytest.fixture
def make_transport(backend: str, settings: Settings) -> TransportFactory:
    """A factory of transports that all reach the same broker (one per client/service)."""
    if backend == "memory":
        broker = MemoryBroker()
        return lambda: MemoryTransport(broker)

    def kafka() -> Transport:
        from kourier.transports import kafka_transport

        return kafka_transport(settings)  # the client library the settings name

    return kafka
