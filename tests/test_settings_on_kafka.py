"""Settings read in any case reach a real secured broker, through both client libraries."""

from __future__ import annotations

import os

import pytest

from kourier.settings import Settings
from kourier.transports import kafka_transport
from kourier.transports.base import TopicSpec
from tests.conftest import unique_prefix

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(60)]


def secured(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set: the broker was started without --security")
    return value


@pytest.mark.parametrize("library", ["aiokafka", "confluent"])
@pytest.mark.parametrize(
    ("protocol", "servers"),
    [
        ("sasl_plaintext", "KOURIER_TEST_SASL_BOOTSTRAP_SERVERS"),
        ("ssl", "KOURIER_TEST_SSL_BOOTSTRAP_SERVERS"),
    ],
)
async def test_lower_case_choices_connect_and_publish(
    library: str, protocol: str, servers: str
) -> None:
    """KOURIER_SECURITY_PROTOCOL and KOURIER_SASL_MECHANISM in lower case work end to end."""
    env = {
        "KOURIER_BOOTSTRAP_SERVERS": secured(servers),
        "KOURIER_KAFKA_CLIENT": library.upper(),
        "KOURIER_SECURITY_PROTOCOL": protocol,
    }
    if protocol.startswith("sasl"):
        env |= {
            "KOURIER_SASL_MECHANISM": "scram-sha-256",
            "KOURIER_SASL_USERNAME": secured("KOURIER_TEST_SASL_USERNAME"),
            "KOURIER_SASL_PASSWORD": secured("KOURIER_TEST_SASL_PASSWORD"),
        }
    else:
        env["KOURIER_SSL_CAFILE"] = secured("KOURIER_TEST_SSL_CAFILE")
    transport = kafka_transport(Settings.from_env(env))
    await transport.start()
    try:
        topic = f"{unique_prefix()}case"
        await transport.ensure_topics([TopicSpec(topic, 1, 1)])
        await (await transport.publish(topic, b"any case"))
    finally:
        await transport.stop()
