"""Every way a request record is committed without the app handling it, on every transport.

docs/reliability.md lists these paths; each one dead-letters the record with a reason
header, or (an expired request, a repeat) is counted and logged. Records are written
raw (``tests/rawkafka.py``), byte for byte, as a hostile or buggy producer could: also
header names that are not UTF-8, which Kafka stores and its client libraries fail to
read. Each test runs on the in-memory broker and on real Kafka through both client
libraries.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from kourier import Client, Service, Settings, protocol
from kourier.admin import DeadLetter, read_dead_letters, replay
from kourier.protocol import ReplyAddress, Request
from kourier.transports.base import TopicSpec, Transport
from tests import apps
from tests.conftest import TransportFactory
from tests.rawkafka import RawRecord, RawWriter
from tests.server.conftest import eventually

pytestmark = pytest.mark.timeout(120)

BAD_NAME = b"\xff\xfebad"


class Parts:
    """A service, a client and a raw writer on one broker, stopped at the end."""

    def __init__(self, settings: Settings, make_transport: TransportFactory) -> None:
        self.settings = settings
        self.make_transport = make_transport
        self.transports: list[Transport] = []
        self.started: list[Service | Client] = []
        self.writer: RawWriter | None = None

    async def service(self, settings: Settings | None = None) -> Service:
        service = Service(
            apps.app, "orders", settings or self.settings, transport=self.make_transport()
        )
        await service.start()
        self.started.append(service)
        return service

    async def client(self, settings: Settings | None = None) -> Client:
        transport = self.make_transport()
        await transport.start()
        self.transports.append(transport)
        client = Client(settings or self.settings, transport=transport)
        await client.start()
        self.started.append(client)
        return client

    async def raw(self) -> RawWriter:
        transport = self.make_transport()
        writer = RawWriter(transport, self.settings.bootstrap_servers)
        await writer.start()
        self.writer = writer
        return writer

    async def dead_letters(self, count: int, timeout: float = 20.0) -> list[DeadLetter]:
        """The service's dead letters, once there are ``count`` of them."""
        transport = self.make_transport()
        await transport.start()
        try:
            deadline = time.monotonic() + timeout
            while True:
                letters = await read_dead_letters(transport, self.settings, "orders")
                if len(letters) >= count or time.monotonic() > deadline:
                    return letters
                await asyncio.sleep(0.2)
        finally:
            await transport.stop()

    async def close(self) -> None:
        for part in reversed(self.started):
            await part.stop()
        for transport in self.transports:
            await transport.stop()
        if self.writer is not None:
            await self.writer.stop()


@pytest.fixture
async def parts(settings: Settings, make_transport: TransportFactory) -> AsyncIterator[Parts]:
    parts = Parts(settings, make_transport)
    try:
        yield parts
    finally:
        await parts.close()


def request_record(request: Request, *extra: tuple[bytes, bytes]) -> RawRecord:
    """``request`` as a raw record, with ``extra`` headers appended."""
    key, value, headers = protocol.encode_request(request)
    raw = [(name.encode(), value) for name, value in headers]
    return RawRecord(value, key, [*raw, *extra])


def one_way(path: str = "/events", body: bytes = b'{"kind": "x"}') -> Request:
    return Request(protocol.new_request_id(), "POST", path, body=body)


async def test_an_undecodable_request_is_dead_lettered_and_its_neighbours_run(
    parts: Parts,
) -> None:
    """A header name that is not UTF-8 in the middle of a batch: dead-lettered with its key
    and value, the records before and after it handled, the partition committed past it."""
    service = await parts.service()
    writer = await parts.raw()
    apps.events.clear()
    first, bad, last = one_way(body=b'{"n": 1}'), one_way(), one_way(body=b'{"n": 3}')
    bad_record = request_record(bad, (BAD_NAME, b"x"))
    bad_record.key = b"hostile-key"
    await writer.write(
        service.request_topic, 0, [request_record(first), bad_record, request_record(last)]
    )
    await eventually(lambda: len(apps.events) == 2 and service.stats.dead_letters == 1, 30)
    assert apps.events == [{"n": 1}, {"n": 3}]
    assert service.stats.undecodable == 1
    [letter] = await parts.dead_letters(1)
    assert letter.reason.startswith("undecodable record: ")
    assert letter.source == f"{service.request_topic}[0]@1"
    assert (letter.record.key, letter.record.value) == (b"hostile-key", bad_record.value)
    consumer = service.consumer
    assert consumer is not None
    await eventually(lambda: consumer.completed == 3, 10)
    assert (await consumer.lag()).get((service.request_topic, 0), 0) == 0


async def test_a_backlog_on_every_partition_with_one_undecodable_record_loses_nothing(
    parts: Parts,
) -> None:
    """A backlog on every partition, one undecodable record among it, fetched together
    when the service starts: every other record runs exactly once, the bad one is
    dead-lettered (the client library fails the whole fetch, not one partition)."""
    settings = parts.settings
    topic = settings.request_topic("orders")
    setup = parts.make_transport()
    await setup.start()
    await setup.ensure_topics([TopicSpec(topic, settings.partitions)])
    await setup.stop()
    writer = await parts.raw()
    apps.events.clear()
    expected = []
    for partition in range(settings.partitions):
        batch = []
        for n in range(5):
            body = json.dumps({"p": partition, "n": n}).encode()
            expected.append({"p": partition, "n": n})
            batch.append(request_record(one_way(body=body)))
            if (partition, n) == (1, 2):
                batch.append(request_record(one_way(), (BAD_NAME, b"x")))
        await writer.write(topic, partition, batch)
    service = await parts.service()
    await eventually(
        lambda: len(apps.events) == len(expected) and service.stats.dead_letters == 1, 30
    )
    await asyncio.sleep(0.5)  # nothing more comes: no record runs twice
    assert sorted(apps.events, key=lambda e: (e["p"], e["n"])) == expected
    assert service.stats.undecodable == 1


async def test_an_undecodable_reply_never_stalls_the_caller(parts: Parts) -> None:
    """A record the client library cannot read on a caller's reply partition is stepped
    over and counted; the caller's calls before and after it are answered."""
    await parts.service()
    client = await parts.client()
    writer = await parts.raw()
    assert (await client.request("orders", "GET", "/hello/before")).status_code == 200
    address = client.inbox.address
    await writer.write(address.topic, address.partition, [RawRecord(b"v", b"k", [(BAD_NAME, b"")])])
    for n in range(3):
        response = await client.request("orders", "GET", f"/hello/after{n}", timeout=15)
        assert response.status_code == 200
    await eventually(lambda: client.inbox.dropped["undecodable"] == 1)


async def test_an_undecodable_dead_letter_is_listed(parts: Parts) -> None:
    """The dead-letter tools read past a record the client library cannot read, list it
    with why, and do not replay it."""
    service = await parts.service()
    writer = await parts.raw()
    await writer.write(
        service.dead_letter_topic,
        0,
        [
            RawRecord(b"one", b"k1", [(b"kourier-dead-letter-reason", b"first")]),
            RawRecord(b"two", b"k2", [(BAD_NAME, b"x")]),
            RawRecord(b"three", b"k3", [(b"kourier-dead-letter-reason", b"third")]),
        ],
    )
    letters = await parts.dead_letters(3)
    assert [letter.record.value for letter in letters] == [b"one", b"two", b"three"]
    assert letters[1].record.undecodable is not None
    assert "the Kafka client cannot read this record" in letters[1].reason
    assert [letters[0].reason, letters[2].reason] == ["first", "third"]
    transport = parts.make_transport()
    await transport.start()
    try:
        assert await replay(transport, parts.settings, "orders", letters) == 2
    finally:
        await transport.stop()


async def test_a_one_way_message_over_the_services_limit_is_dead_lettered(
    parts: Parts,
) -> None:
    """A one-way message the caller's settings allowed but the service's do not is not
    lost: it is dead-lettered with the sizes, counted, and the app never sees it."""
    service = await parts.service(parts.settings.replace(max_request_bytes=1000))
    client = await parts.client()
    apps.events.clear()
    body = b'{"kind": "' + b"x" * 2000 + b'"}'
    await client.send("orders", "POST", "/events", content=body)
    await eventually(lambda: service.stats.dead_letters == 1, 20)
    assert service.stats.too_large == 1
    assert apps.events == []
    [letter] = await parts.dead_letters(1)
    assert "over max_request_bytes (1000)" in letter.reason
    assert letter.record.value == body


async def test_a_two_way_request_over_the_services_limit_gets_413_and_is_dead_lettered(
    parts: Parts,
) -> None:
    """A two-way request over the service's limit is answered 413 and dead-lettered."""
    service = await parts.service(parts.settings.replace(max_request_bytes=1000))
    client = await parts.client()
    response = await client.request("orders", "POST", "/echo", content=b"x" * 2000)
    assert response.status_code == 413
    await eventually(lambda: service.stats.dead_letters == 1, 20)
    assert service.stats.too_large == 1


@pytest.mark.parametrize(
    "address",
    [
        ReplyAddress("no-such-reply-topic", 0),
        ReplyAddress("illegal topic name!", 0),
        None,  # the caller's reply topic, a partition it does not have (filled in below)
    ],
)
async def test_a_request_with_a_bad_reply_address_is_dead_lettered_before_the_app_runs(
    parts: Parts, address: ReplyAddress | None
) -> None:
    """A reply address that cannot be answered: dead-lettered at once, the app not run."""
    service = await parts.service()
    client = await parts.client()  # creates the reply topic
    writer = await parts.raw()
    if address is None:
        address = ReplyAddress(client.inbox.address.topic, 999)
    request = Request(protocol.new_request_id(), "POST", "/count", reply_to=address)
    handled = service.stats.handled
    started = time.monotonic()
    await writer.write(service.request_topic, 0, [request_record(request)])
    await eventually(lambda: service.stats.dead_letters == 1, 20)
    assert time.monotonic() - started < 5
    assert service.stats.bad_reply_address == 1
    assert service.stats.handled == handled
    [letter] = await parts.dead_letters(1)
    assert letter.reason.startswith("bad reply address: ")


async def test_a_malformed_request_is_dead_lettered(parts: Parts) -> None:
    """A record that breaks wire format v1 is dead-lettered with why, and counted."""
    service = await parts.service()
    writer = await parts.raw()
    await writer.write(service.request_topic, 0, [RawRecord(b"{}", None, [(b"kourier-v", b"9")])])
    await eventually(lambda: service.stats.dead_letters == 1, 20)
    assert service.stats.malformed == 1
    [letter] = await parts.dead_letters(1)
    assert letter.reason.startswith("malformed record: ")


async def test_an_expired_request_is_a_counted_skip_not_a_dead_letter(parts: Parts) -> None:
    """A request past its deadline is skipped and counted; it is not dead-lettered."""
    service = await parts.service()
    writer = await parts.raw()
    request = one_way()
    request.deadline_ms = protocol.now_ms() - 1000
    await writer.write(
        service.request_topic, 0, [request_record(request), request_record(one_way())]
    )
    await eventually(lambda: service.stats.expired == 1 and service.stats.one_way == 1, 20)
    assert service.stats.dead_letters == 0


async def test_a_repeated_request_is_answered_from_the_record_not_run_again(
    parts: Parts,
) -> None:
    """A request id seen again is answered with the recorded reply; the app runs once."""
    service = await parts.service()
    client = await parts.client()
    request_id = protocol.new_request_id()
    first = await client.request("orders", "POST", "/count", request_id=request_id)
    again = await client.request("orders", "POST", "/count", request_id=request_id)
    assert first.json() == again.json()
    assert service.stats.handled == 1
    assert service.stats.duplicates == 1
