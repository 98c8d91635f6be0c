"""Fuzzing at the bytes level against the real broker, through both Kafka clients.

A raw producer (``tests/rawkafka.py``) writes what hypothesis draws onto a running
service's request topic and onto a running caller's reply partition: random header
names and values as bytes (also names that are not UTF-8), null and huge keys, kourier
headers missing, duplicated or garbled, random values, and real requests mutated.
Valid calls go on all the while. Every example checks that:

- every valid call is answered (no partition of the request topic or of the reply
  topic stalls behind a bad record);
- every record written to the request topic is accounted for: refused before the app
  (dead-lettered: malformed, undecodable, bad reply address, too large), skipped as
  expired, answered from the idempotency record, or run; nothing is left unfetched;
- every record on the reply partition that is not a reply is counted as dropped.

The CI run is bounded: 15 examples of 25 to 110 records per client library, about
600 records and under 10 s each. ``KOURIER_FUZZ_EXAMPLES`` sets the number of examples;
``scripts/fuzz-broker`` runs it longer and prints the figures docs/reliability.md quotes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kourier import Client, Service, Settings, protocol
from kourier.errors import ProtocolError
from kourier.protocol import ReplyAddress, Request
from tests import apps
from tests.conftest import kafka_bootstrap, unique_prefix
from tests.rawkafka import RawRecord, RawWriter
from tests.server.conftest import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(1800)]

FUZZ_EXAMPLES = int(os.environ.get("KOURIER_FUZZ_EXAMPLES", "15"))
PARTITIONS = 3

KOURIER_NAMES = [
    name.encode()
    for name in (
        protocol.H_VERSION,
        protocol.H_TYPE,
        protocol.H_ID,
        protocol.H_METHOD,
        protocol.H_TARGET,
        protocol.H_REPLY_TO,
        protocol.H_DEADLINE,
        protocol.H_ATTEMPT,
        protocol.H_STATUS,
        protocol.H_SEQ,
        protocol.H_END,
        protocol.H_FROM,
    )
]
#: Stands for this run's reply address in drawn header values (filled in per run).
REPLY_TO = b"<reply-to>"

names = st.one_of(
    st.sampled_from([*KOURIER_NAMES, b"content-type", b"\xff\xfe", b"kourier-\x80"]),
    st.binary(max_size=12),
)
values = st.one_of(
    st.sampled_from(
        [
            b"1",
            b"request",
            b"message",
            b"reply",
            b"GET",
            b"POST",
            b"/hello/x",
            b"/events",
            b"0",
            b"-1",
            b"abc123",
            b"99999999999999999999",
            REPLY_TO,
            b"nowhere:0",
            b"bad name:1",
        ]
    ),
    st.binary(max_size=30),
)
keys = st.one_of(
    st.none(),
    st.binary(max_size=20),
    st.builds(lambda n, b: bytes([b]) * n, st.integers(10_000, 120_000), st.integers(0, 255)),
)
random_records = st.builds(
    RawRecord,
    value=st.one_of(st.none(), st.binary(max_size=300)),
    key=keys,
    headers=st.lists(st.tuples(names, st.one_of(st.none(), values)), max_size=10),
)
#: A real request, then edits: drop or duplicate a header (by index), or add a drawn one.
Edit = tuple[str, int, tuple[bytes, bytes]]
edits = st.lists(
    st.tuples(
        st.sampled_from(["drop", "duplicate", "add"]), st.integers(0, 9), st.tuples(names, values)
    ),
    max_size=3,
)
#: Where a mutated request's replies go: none (one-way), this run's reply partition, a
#: reply topic that does not exist, or a partition the reply topic does not have.
ADDRESSES = ["one-way", "ours", "missing-topic", "missing-partition"]
#: Request bodies: empty, small, and over the service's ``max_request_bytes``.
BODIES = [b"", b'{"kind": "x"}', b"x" * 70_000]
mutated_requests = st.tuples(
    st.sampled_from(["GET /hello/m", "POST /events", "POST /count", "GET /nope"]),
    st.sampled_from(ADDRESSES),
    edits,
    st.sampled_from(BODIES),
)
request_side = st.lists(st.one_of(random_records, mutated_requests), min_size=20, max_size=80)
reply_side = st.lists(random_records, min_size=5, max_size=30)


@dataclass
class Figures:
    request_records: int = 0
    reply_records: int = 0
    valid_calls: int = 0
    answered: int = 0
    expected_refusals: int = 0
    expected_reply_drops: int = 0
    stalls: int = 0
    by_why: dict[str, int] = field(default_factory=dict)


@dataclass
class Run:
    service: Service
    client: Client
    writer: RawWriter
    figures: Figures


@pytest.fixture(params=["kafka", "confluent"])
async def run(request: pytest.FixtureRequest) -> AsyncIterator[Run]:
    """A service and a caller on the real broker (through one client library), and a raw
    producer; the figures are printed at the end."""
    client_library = "aiokafka" if request.param == "kafka" else "confluent"
    config = Settings(
        topic_prefix=unique_prefix(),
        partitions=PARTITIONS,
        reply_partitions=2,
        commit_interval=0.05,
        drain_timeout=5.0,
        retry_attempts=1,
        max_request_bytes=64 * 1024,
        bootstrap_servers=kafka_bootstrap(),
        kafka_client=client_library,
    )
    service = Service(apps.app, "orders", config)
    client = Client(config)
    writer = RawWriter(None, config.bootstrap_servers)
    await service.start()
    await client.start()
    await writer.start()
    figures = Figures()
    try:
        yield Run(service, client, writer, figures)
    finally:
        await writer.stop()
        await client.stop()
        await service.stop()
        stats = service.stats
        line = {
            "client": client_library,
            "examples": FUZZ_EXAMPLES,
            "request_records_written": figures.request_records,
            "reply_records_written": figures.reply_records,
            "dead_lettered": stats.dead_letters,
            "refused": {
                "malformed": stats.malformed,
                "undecodable": stats.undecodable,
                "bad_reply_address": stats.bad_reply_address,
                "too_large": stats.too_large,
            },
            "expired": stats.expired,
            "run": stats.handled,
            "replies_dropped": dict(client.inbox.dropped),
            "valid_calls": figures.valid_calls,
            "valid_calls_answered": figures.answered,
            "stalls": figures.stalls,
        }
        print(f"\nFIGURES fuzz {json.dumps(line)}")


def build(drawn: RawRecord | tuple[str, str, list[Edit], bytes], reply_to: bytes) -> RawRecord:
    """The raw record for a drawn item, with the run's reply address filled in."""
    if isinstance(drawn, RawRecord):
        return RawRecord(
            drawn.value,
            drawn.key,
            [(n, reply_to if v == REPLY_TO else v) for n, v in drawn.headers],
        )
    line, where, changes, body = drawn
    method, path = line.split()
    ours = ReplyAddress.decode(reply_to)
    address = {
        "one-way": None,
        "ours": ours,
        "missing-topic": ReplyAddress(ours.topic + "-missing", 0),
        "missing-partition": ReplyAddress(ours.topic, 99),
    }[where]
    request = Request(protocol.new_request_id(), method, path, body=body, reply_to=address)
    key, value, headers = protocol.encode_request(request)
    raw: list[tuple[bytes, bytes | None]] = [(n.encode(), v) for n, v in headers]
    for what, index, (name, header_value) in changes:
        if what == "drop" and raw:
            del raw[index % len(raw)]
        elif what == "duplicate" and raw:
            raw.append(raw[index % len(raw)])
        elif what == "add":
            raw.append((name, reply_to if header_value == REPLY_TO else header_value))
    return RawRecord(value, key, raw)


def refused_for_its_bytes(record: RawRecord) -> bool:
    """True if the service must refuse ``record`` whatever else it holds: a header name
    that is not UTF-8, or anything wire format v1 rejects."""
    try:
        headers = [(n.decode("utf-8"), v or b"") for n, v in record.headers]
    except UnicodeDecodeError:
        return True
    try:
        protocol.decode_request(record.key, record.value or b"", headers)
    except ProtocolError:
        return True
    return False


def dropped_by_the_inbox(record: RawRecord) -> bool:
    """True if a reply inbox must drop ``record`` as malformed or undecodable."""
    try:
        headers = [(n.decode("utf-8"), v or b"") for n, v in record.headers]
    except UnicodeDecodeError:
        return True
    try:
        protocol.decode_reply(record.value or b"", headers)
    except ProtocolError:
        return True
    return False


def accounted(service: Service) -> int:
    """Request records that reached an end: refused, expired, replayed, or run."""
    s = service.stats
    return (
        s.malformed
        + s.undecodable
        + s.bad_reply_address
        + s.too_large
        + s.expired
        + s.duplicates
        + s.handled
    )


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    database=None,
)
@given(requests=request_side, replies=reply_side, chunk=st.integers(1, 8))
async def test_hostile_bytes_never_stall_a_partition_and_never_vanish(
    run: Run,
    requests: list[RawRecord | tuple[str, str, list[Edit], bytes]],
    replies: list[RawRecord],
    chunk: int,
) -> None:
    """Hostile records on a request topic and a reply partition, interleaved with valid
    calls: every call answered, every record accounted for, no partition stalls."""
    service, client, writer, figures = run.service, run.client, run.writer, run.figures
    address = client.inbox.address
    reply_to = address.encode()
    consumer = service.consumer
    assert consumer is not None
    records = [build(item, reply_to) for item in requests]
    reply_records = [build(item, reply_to) for item in replies]
    accounted_before = accounted(service)
    completed_before = consumer.completed
    dropped_before = sum(client.inbox.dropped.values())
    calls: list[asyncio.Task[int]] = []

    async def call(n: int) -> int:
        response = await client.request("orders", "GET", f"/hello/v{n}", timeout=30)
        return response.status_code

    for start in range(0, max(len(records), len(reply_records), 1), chunk):
        calls.append(asyncio.create_task(call(start)))
        batch = records[start : start + chunk]
        if batch:
            await writer.write(service.request_topic, start % PARTITIONS, batch)
        reply_batch = reply_records[start : start + chunk]
        if reply_batch:
            await writer.write(address.topic, address.partition, reply_batch)
    calls.append(asyncio.create_task(call(-1)))
    statuses = await asyncio.gather(*calls)
    figures.valid_calls += len(calls)
    figures.answered += statuses.count(200)
    assert statuses == [200] * len(calls)

    written = len(records) + len(calls)
    figures.request_records += len(records)
    figures.reply_records += len(reply_records)
    started = time.monotonic()
    try:
        await eventually(lambda: consumer.completed - completed_before == written, 30)
        await eventually(lambda: accounted(service) - accounted_before == written, 10)
    except AssertionError:
        figures.stalls += 1
        raise
    assert time.monotonic() - started < 30
    assert sum((await consumer.lag()).values()) == 0
    # Records the bytes alone condemn are refused (others may be refused too: an unknown
    # reply topic, a duplicated header the decoder takes).
    refused = sum(map(refused_for_its_bytes, records))
    figures.expected_refusals += refused
    s = service.stats
    assert s.malformed + s.undecodable >= refused
    must_drop = sum(map(dropped_by_the_inbox, reply_records))
    figures.expected_reply_drops += must_drop
    await eventually(lambda: sum(client.inbox.dropped.values()) - dropped_before == must_drop, 10)
