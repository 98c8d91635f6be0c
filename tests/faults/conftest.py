"""Fixtures of the fault tests: per-test environments and private brokers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import kafka_bootstrap
from tests.faults.harness import PrivateBroker
from tests.processes import ROOT

MakeEnv = Callable[..., dict[str, str]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cluster: starts a private 3-node Kafka cluster (about a minute; deselect with "
        "-m 'not cluster', the README test command runs it)",
    )


@pytest.fixture
def make_env(tmp_path: Path) -> MakeEnv:
    """Environment of the services and callers of one test: fresh topics, a handled-log
    folder (``tmp_path``), and any ``KOURIER_*`` overrides given."""
    prefix = f"f{uuid.uuid4().hex[:8]}."

    def make(bootstrap: str, **overrides: str) -> dict[str, str]:
        return {
            **os.environ,
            "KOURIER_BOOTSTRAP_SERVERS": bootstrap,
            "KOURIER_TOPIC_PREFIX": prefix,
            "KOURIER_PARTITIONS": "4",
            "KOURIER_E2E_DIR": str(tmp_path),
            "PYTHONPATH": str(ROOT),
            **overrides,
        }

    return make


@pytest.fixture(scope="package")
def _single_node_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """One single-node private broker for the fault tests that kill the only node:
    started once (a start takes 5 to 15 s), stopped after the last fault test."""
    kafka_bootstrap()
    broker = PrivateBroker(tmp_path_factory.mktemp("kafka"), nodes=1)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def private_broker(_single_node_broker: PrivateBroker) -> PrivateBroker:
    """A running single-node broker that is not the shared one, for a test to kill and
    restart. The tests take turns on one (each uses topics and groups of its own, and
    restarts the node it killed); a node a failed test left down is started again first.
    A test that wants three nodes uses ``private_cluster``. Like every Kafka test it is
    skipped outside CI when no broker is named (``kafka_bootstrap``)."""
    _single_node_broker.restore()
    return _single_node_broker


@pytest.fixture
def private_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """A started 3-node cluster of this test's own (replication 3, min ISR 2)."""
    kafka_bootstrap()
    broker = PrivateBroker(tmp_path_factory.mktemp("kafka3"), nodes=3)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
