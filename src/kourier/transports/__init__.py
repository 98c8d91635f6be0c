"""Broker transports: the contract (base), Kafka (two client libraries), and in-memory."""

from __future__ import annotations

import importlib
from typing import cast

from kourier.errors import SettingsError
from kourier.settings import MEMORY_SCHEME, Settings
from kourier.transports.base import Transport

_KAFKA_TRANSPORTS = {
    "aiokafka": ("kourier.transports.kafka", "KafkaTransport"),
    "confluent": ("kourier.transports.confluent", "ConfluentTransport"),
}
#: The client library each transport needs: (its import name, what to install).
_LIBRARIES = {
    "aiokafka": ("aiokafka", "kourier"),
    "confluent": ("confluent_kafka", "'kourier[confluent]'"),
}


def kafka_transport(settings: Settings) -> Transport:
    """The Kafka transport ``settings.kafka_client`` names, imported only now: a process
    loads one Kafka client library, and an in-memory one loads none.

    ``bootstrap_servers="memory://NAME"`` gives a transport on the in-process broker open
    under NAME instead (``kourier.testing``; see docs/design.md, "Testing").
    """
    if settings.bootstrap_servers.startswith(MEMORY_SCHEME):
        from kourier.transports.memory import MemoryTransport, named

        return MemoryTransport(named(settings.bootstrap_servers.removeprefix(MEMORY_SCHEME)))
    module_name, class_name = _KAFKA_TRANSPORTS[settings.kafka_client]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        library, package = _LIBRARIES[settings.kafka_client]
        if exc.name != library:
            raise
        raise SettingsError(
            f"kafka_client: {settings.kafka_client!r} needs the {library} library, which is "
            f"not installed: pip install {package}"
        ) from exc
    transport_class = getattr(module, class_name)
    return cast(Transport, transport_class(settings))
