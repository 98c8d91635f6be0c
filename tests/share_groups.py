"""Set a Kafka share group's configs (lock duration, delivery limit) before it is used.

The shared broker is never restarted, so tests set these per group, as an operator would
with ``kafka-configs --entity-type groups``.
"""

from __future__ import annotations


def configure_share_group(bootstrap: str, group: str, **configs: str) -> None:
    """``configure_share_group(b, g, share_record_lock_duration_ms="15000")``: underscores
    in the names stand for dots."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    entries = [
        ConfigEntry(name.replace("_", "."), value, incremental_operation=AlterConfigOpType.SET)
        for name, value in configs.items()
    ]
    resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=entries)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.incremental_alter_configs([resource])[resource].result(timeout=10)
