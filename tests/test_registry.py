"""The service registry on the in-memory broker: record format, reader, announcer."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Sequence

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from kourier import Client, InstanceInfo, ServiceInfo
from kourier.errors import ProtocolError, PublishError
from kourier.registry import (
    LIVE_INTERVALS,
    Directory,
    decode,
    encode,
    registry_topic,
    registry_topic_spec,
)
from kourier.server.announce import app_routes, app_version
from kourier.server.serve import Service
from kourier.settings import Settings
from kourier.transports.base import Record, TopicSpec
from kourier.transports.memory import MemoryBroker, MemoryTransport

SETTINGS = Settings(partitions=2, reply_partitions=2, heartbeat_interval=0.05)


def versioned_app() -> FastAPI:
    app = FastAPI(version="2.1.0")

    @app.get("/orders/{order_id}")
    async def get_order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    @app.post("/orders")
    async def add_order() -> dict[str, str]:
        return {"ok": "yes"}

    return app


def instance(**changes: object) -> InstanceInfo:
    info = InstanceInfo(
        service="orders",
        instance_id="abc123",
        host="h",
        pid=42,
        kourier_version="0.1.0",
        app_version="1.0",
        routes=(("GET", "/orders/{id}"),),
        started_at=1000.0,
        heartbeat_at=1000.0,
        heartbeat_interval=10.0,
    )
    return dataclasses.replace(info, **changes)  # type: ignore[arg-type]


def record(key: bytes | None, value: bytes | None, offset: int = 0) -> Record:
    return Record("kourier.registry", 0, offset, key, value, (), 0)


# -- the record format ---------------------------------------------------------------


def test_a_registration_round_trips_through_its_record() -> None:
    """encode then decode gives back the same instance, keyed <service>/<instance id>."""
    key, value = encode(instance())
    assert key == b"orders/abc123"
    assert json.loads(value)["format"] == 1
    assert decode(key, value) == ("orders/abc123", instance())


def test_a_tombstone_decodes_to_no_instance() -> None:
    """A null value under a valid key is the withdrawal of that instance."""
    assert decode(b"orders/abc123", None) == ("orders/abc123", None)


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        (None, b"{}", "without a key"),
        (b"orders", b"{}", "<service>/<instance id>"),
        (b"-bad/abc", None, "service"),
        (b"orders/a b", None, "instance id"),
        (b"orders/abc123", b"[1]", "not a JSON object"),
        (b"orders/abc123", b"\xff", "not JSON"),
        (b"orders/abc123", b'{"format": 2}', "format 2"),
        (b"orders/abc123", b'{"format": true}', "format True"),
    ],
)
def test_malformed_records_say_what_is_wrong(
    key: bytes | None, value: bytes | None, why: str
) -> None:
    """Each way a registry record can break the format is a ProtocolError saying which."""
    with pytest.raises(ProtocolError, match=why):
        decode(key, value)


def test_a_value_naming_another_instance_is_refused() -> None:
    """The value's service and instance must be the key's: a record cannot speak for another."""
    _, value = encode(instance(instance_id="other"))
    with pytest.raises(ProtocolError, match="another service or instance"):
        decode(b"orders/abc123", value)


def test_liveness_is_three_heartbeat_intervals() -> None:
    """An instance is live until its heartbeat is 3 intervals old, then not."""
    info = instance(heartbeat_at=1000.0, heartbeat_interval=10.0)
    assert LIVE_INTERVALS == 3
    assert info.live_at(1030.0)
    assert not info.live_at(1030.1)
    fresh = instance(heartbeat_at=time.time())
    service = ServiceInfo("orders", (info, fresh))
    assert fresh.live and not info.live
    assert service.live == (fresh,)


keys = st.one_of(st.none(), st.binary(max_size=40), st.just(b"orders/abc123"))
values = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    ["format", "service", "instance", "host", "pid", "routes", "heartbeat_at"]
                ),
                inner,
                max_size=6,
            )
        ),
        max_leaves=12,
    ).map(lambda v: json.dumps(v).encode()),
)


@hypothesis_settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(keys, values), max_size=8))
def test_the_reader_skips_and_counts_whatever_it_cannot_read(
    pairs: list[tuple[bytes | None, bytes | None]],
) -> None:
    """Any records at all: the reader never raises, counts each one it cannot read as
    malformed, and keeps the good registration that follows them."""
    directory = Directory(MemoryTransport(), SETTINGS)
    good_key, good_value = encode(instance(instance_id="good"))
    records = [record(k, v, i) for i, (k, v) in enumerate(pairs)]
    records.append(record(good_key, good_value, len(records)))
    readable = 0
    for r in records:
        try:
            decode(r.key, r.value)
            readable += 1
        except ProtocolError:
            pass
    directory.apply(records)
    assert directory.stats.records == len(records)
    assert directory.stats.malformed == len(records) - readable
    service = directory.service("orders")
    assert service is not None and instance(instance_id="good") in service.instances


async def test_the_following_reader_outlives_malformed_records() -> None:
    """Hostile records on the live topic are counted and skipped; the reader goes on and
    takes the registration published after them."""
    transport = MemoryTransport()
    await transport.ensure_topics([registry_topic_spec(SETTINGS)])
    directory = Directory(transport, SETTINGS)
    try:
        assert await directory.services() == {}
        topic = registry_topic(SETTINGS)
        for key, value in [(b"x", b"y"), (b"orders/a", b"\x00"), (b"orders/a", b"[]")]:
            await transport.publish(topic, value, key=key)
        good_key, good_value = encode(instance(heartbeat_at=time.time()))
        await transport.publish(topic, good_value, key=good_key)
        assert await directory.wait_for_live("orders", 2.0)
        assert directory.stats.malformed == 3
    finally:
        await directory.stop()


def test_a_malformed_record_is_logged_with_its_position(caplog: pytest.LogCaptureFixture) -> None:
    """Skipping a record is never silent: a warning names where it was."""
    directory = Directory(MemoryTransport(), SETTINGS)
    with caplog.at_level(logging.WARNING, "kourier.registry"):
        directory.apply([record(b"orders", b"x", 7)])
    assert "kourier.registry[0]@7" in caplog.text and directory.stats.malformed == 1


# -- the in-memory broker keeps Kafka's rules for a compacted topic --------------------


async def test_a_compacted_topic_refuses_records_without_a_key() -> None:
    """As Kafka does, a compacted topic takes tombstones but no record without a key."""
    transport = MemoryTransport()
    await transport.ensure_topics([registry_topic_spec(SETTINGS)])
    topic = registry_topic(SETTINGS)
    with pytest.raises(PublishError, match="without a key"):
        await transport.publish(topic, b"{}")
    await (await transport.publish(topic, None, key=b"orders/abc"))
    assert transport.broker.topics[topic][0][0].value is None


# -- the announcer and the directory together ------------------------------------------


async def test_an_instance_appears_with_its_routes_and_withdraws_on_stop() -> None:
    """A started service is live in the registry with its app version and OpenAPI
    routes; a clean stop writes a tombstone and it is gone at once."""
    broker = MemoryBroker()
    service = Service(versioned_app(), "orders", SETTINGS, transport=MemoryTransport(broker))
    async with Client(SETTINGS, transport=MemoryTransport(broker)) as client:
        async with service:
            found = await client.services()
            [info] = found["orders"].live
            assert info.instance_id == service.announcer.instance_id
            assert info.app_version == "2.1.0"
            assert set(info.routes) == {("GET", "/orders/{order_id}"), ("POST", "/orders")}
            assert service.announcer.running
        await asyncio.sleep(0.05)  # the reader follows the tombstone
        assert await client.services() == {}
        log = broker.topics[registry_topic(SETTINGS)][0]
        assert log[-1].value is None and log[-1].key == f"orders/{info.instance_id}".encode()


async def test_heartbeats_move_the_heartbeat_time_on() -> None:
    """The announcer re-announces every heartbeat_interval with a newer heartbeat time."""
    broker = MemoryBroker()
    async with (
        Service(versioned_app(), "orders", SETTINGS, transport=MemoryTransport(broker)) as svc,
        Client(SETTINGS, transport=MemoryTransport(broker)) as client,
    ):
        [first] = (await client.services())["orders"].instances
        await asyncio.sleep(SETTINGS.heartbeat_interval * 4)
        [later] = (await client.services())["orders"].instances
        assert later.heartbeat_at > first.heartbeat_at
        assert later.started_at == first.started_at
        assert svc.announcer.heartbeats >= 3 and svc.announcer.failures == 0


class FailingHeartbeats(MemoryTransport):
    """Takes the first registration, then fails every record for the registry."""

    def __init__(self, broker: MemoryBroker, error: Exception) -> None:
        super().__init__(broker)
        self.error = error
        self.registrations = 0

    async def publish(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> Awaitable[None]:
        if topic.endswith("registry") and value is not None:
            self.registrations += 1
            if self.registrations > 1:
                raise self.error
        return await super().publish(topic, value, key=key, headers=headers, partition=partition)


async def test_a_refused_heartbeat_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A heartbeat the broker refuses is a warning and a failure counted; beats go on."""
    transport = FailingHeartbeats(MemoryBroker(), PublishError("broker said no"))
    with caplog.at_level(logging.WARNING, "kourier.server"):
        async with Service(versioned_app(), "orders", SETTINGS, transport=transport) as svc:
            await asyncio.sleep(SETTINGS.heartbeat_interval * 3.5)
            assert svc.announcer.failures >= 2 and svc.announcer.running
    assert "heartbeat of orders instance" in caplog.text and "broker said no" in caplog.text


async def test_a_dying_heartbeat_task_is_an_error_not_silence(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected error ends the heartbeat task: logged as an error, counted, visible."""
    transport = FailingHeartbeats(MemoryBroker(), RuntimeError("bug"))
    with caplog.at_level(logging.ERROR, "kourier.server"):
        async with Service(versioned_app(), "orders", SETTINGS, transport=transport) as svc:
            await asyncio.sleep(SETTINGS.heartbeat_interval * 3)
            assert not svc.announcer.running
            assert svc.announcer.failures == 1
    assert "registry heartbeat of orders instance" in caplog.text and "bug" in caplog.text


async def test_a_reader_started_later_reads_the_registry_from_the_beginning() -> None:
    """A client that starts after the services still finds them (compacted topic, read
    from offset 0), with one entry per instance however many heartbeats were written."""
    broker = MemoryBroker()
    async with (
        Service(versioned_app(), "orders", SETTINGS, transport=MemoryTransport(broker)),
        Service(versioned_app(), "stock", SETTINGS, transport=MemoryTransport(broker)),
        Service(versioned_app(), "stock", SETTINGS, transport=MemoryTransport(broker)),
    ):
        await asyncio.sleep(SETTINGS.heartbeat_interval * 3)
        async with Client(SETTINGS, transport=MemoryTransport(broker)) as client:
            found = await client.services()
    assert sorted(found) == ["orders", "stock"]
    assert len(found["stock"].live) == 2 and len(found["orders"].live) == 1


async def test_without_the_right_to_create_topics_an_absent_registry_is_empty() -> None:
    """With create_topics off and no registry topic yet, the directory is empty (no
    error) and does not create the topic; once a service creates it, it is read."""
    broker = MemoryBroker()
    manual = SETTINGS.replace(create_topics=False)
    directory = Directory(MemoryTransport(broker), manual)
    try:
        assert await directory.services() == {}
        assert registry_topic(manual) not in broker.topics
        await MemoryTransport(broker).ensure_topics(
            [TopicSpec(SETTINGS.request_topic("orders"), 1), TopicSpec(SETTINGS.reply_topic, 1)]
        )
        async with Service(versioned_app(), "orders", SETTINGS, transport=MemoryTransport(broker)):
            assert await directory.wait_for_live("orders", 3.0)
    finally:
        await directory.stop()


def test_app_version_and_routes_without_openapi_are_none_and_empty() -> None:
    """A plain ASGI app has no version and no OpenAPI routes: null and []."""

    async def bare(scope: object, receive: object, send: object) -> None:
        return None

    assert app_version(bare) is None and app_routes(bare) == ()
    assert app_version(versioned_app()) == "2.1.0"
