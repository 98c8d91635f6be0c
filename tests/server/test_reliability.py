"""Retries and dead letters for one-way work; idempotent replays of repeated requests."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from kourier import protocol
from kourier.errors import PublishError
from kourier.protocol import Reply
from kourier.server import reply_sink
from kourier.server.idempotency import Idempotency, MemoryIdempotencyStore, Recorded
from kourier.server.serve import H_DEAD_ATTEMPTS, H_DEAD_REASON, Service
from kourier.transports.base import TopicSpec
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests import apps
from tests.scripted import ScriptedTransport
from tests.server.conftest import SETTINGS, Wire, eventually


def _dead_letters(w: Wire) -> list[dict[str, bytes]]:
    topic = w.transport.broker.topics[SETTINGS.dead_letter_topic("orders")]
    return [dict(r.headers) for partition in topic for r in partition]


async def test_a_failing_one_way_message_is_retried_then_succeeds(
    wire: tuple[Wire, Service],
) -> None:
    """Two failures then a success: three attempts, no dead letter."""
    w, service = wire
    apps.failures.clear()
    await w.call("POST", "/flaky/a?fail_times=2", reply_to=None)
    await eventually(lambda: apps.failures.get("a") == 3 and service.stats.one_way == 1)
    assert service.stats.retries == 2
    assert _dead_letters(w) == []


async def test_a_poison_message_ends_in_dead_letters_without_blocking_others(
    wire: tuple[Wire, Service],
) -> None:
    """A message that always fails is dead-lettered after its attempts; others go on."""
    w, service = wire
    apps.failures.clear()
    poison = await w.call("POST", "/flaky/poison?fail_times=99", reply_to=None, key=b"p")
    for i in range(5):
        await w.call("POST", f"/flaky/ok{i}", reply_to=None, key=f"k{i}".encode())
    await eventually(lambda: all(apps.failures.get(f"ok{i}") == 1 for i in range(5)), 1.0)
    assert apps.failures["poison"] < SETTINGS.retry_attempts, "others did not wait for it"
    await eventually(lambda: service.stats.dead_letters == 1)
    assert apps.failures["poison"] == SETTINGS.retry_attempts
    [letter] = _dead_letters(w)
    assert letter[H_DEAD_ATTEMPTS] == str(SETTINGS.retry_attempts).encode()
    assert b"status 500" in letter[H_DEAD_REASON]
    assert letter["kourier-id"] == poison.id.encode()
    assert letter["kourier-target"] == b"/flaky/poison?fail_times=99"


async def test_two_way_failures_are_not_retried_by_the_service(
    wire: tuple[Wire, Service],
) -> None:
    """A two-way 500 goes straight back to the caller, who decides about retrying."""
    w, service = wire
    apps.failures.clear()
    request = await w.call("POST", "/flaky/tw?fail_times=1")
    [reply] = await w.replies(request.id)
    assert reply.status == 500
    assert apps.failures["tw"] == 1
    assert service.stats.retries == 0


async def test_a_repeated_request_id_gets_the_recorded_response(
    wire: tuple[Wire, Service],
) -> None:
    """A retry with the same request id is answered from the record, not run again."""
    w, service = wire
    apps.counter["n"] = 0
    first = await w.call("POST", "/count")
    assert len(await w.replies(first.id)) == 1
    again = await w.call("POST", "/count", id=first.id)
    replies = await w.replies(first.id, ends=2)
    assert apps.counter["n"] == 1
    assert [json.loads(r.body) for r in replies] == [{"n": 1}, {"n": 1}]
    assert service.stats.duplicates == 1
    assert again.id == first.id


async def test_an_idempotency_key_dedupes_different_request_ids(
    wire: tuple[Wire, Service],
) -> None:
    """Two requests with one Idempotency-Key run once, even while the first is running."""
    w, _ = wire
    apps.counter["n"] = 0
    headers = [(b"idempotency-key", b"pay-42")]
    first = await w.call("POST", "/count", headers=headers)
    second = await w.call("POST", "/count", headers=headers)
    one = await w.replies(first.id)
    two = await w.replies(second.id)
    assert apps.counter["n"] == 1
    assert json.loads(one[0].body) == json.loads(two[0].body) == {"n": 1}
    assert two[0].request_id == second.id


async def test_a_failed_run_is_not_recorded(wire: tuple[Wire, Service]) -> None:
    """After a 500, the same request id runs again rather than replaying the failure."""
    w, _ = wire
    apps.failures.clear()
    first = await w.call("POST", "/flaky/rec?fail_times=1")
    assert (await w.replies(first.id))[0].status == 500
    await w.call("POST", "/flaky/rec?fail_times=1", id=first.id)
    replies = await w.replies(first.id, ends=2)
    assert [r.status for r in replies] == [500, 202]


async def test_idempotency_can_be_turned_off() -> None:
    """With idempotency_window=0, a repeated request id runs the handler again."""
    settings = SETTINGS.replace(idempotency_window=0)
    transport = MemoryTransport()
    await transport.ensure_topics([TopicSpec(settings.reply_topic, 1)])
    reader = transport.partition_reader(settings.reply_topic, 0)
    await reader.start()
    async with Service(apps.app, "orders", settings, transport=MemoryTransport(transport.broker)):
        w = Wire(transport, reader)
        apps.counter["n"] = 0
        first = await w.call("POST", "/count")
        await w.replies(first.id)
        await w.call("POST", "/count", id=first.id)
        replies = await w.replies(first.id, ends=2)
        assert [json.loads(r.body)["n"] for r in replies] == [1, 2]


async def test_the_memory_store_is_bounded_and_expires() -> None:
    """Entries beyond the bound are evicted oldest first; expired entries are gone."""
    store = MemoryIdempotencyStore(max_entries=3, max_bytes=100)
    reply = protocol.Reply("x", 0, b"y" * 10, status=200)
    for i in range(5):
        await store.put(str(i), Recorded((reply,), 10), ttl=60)
    assert len(store) == 3
    assert await store.get("0") is None and await store.get("4") is not None
    await store.put("big", Recorded((reply,), 1000), ttl=60)
    assert await store.get("big") is None, "an entry larger than the whole bound is skipped"
    await store.put("short", Recorded((reply,), 10), ttl=0.01)
    await asyncio.sleep(0.02)
    assert await store.get("short") is None


async def test_the_memory_store_gives_back_what_it_recorded() -> None:
    """Every field of every item comes back as it was recorded."""
    store = MemoryIdempotencyStore()
    items = (
        Reply("a1", 0, b"first", False, 206, [(b"content-type", b"x/y"), (b"x-n", b"1")]),
        Reply("a1", 1, b"", True, None, [], "e" * 16, "orders"),
    )
    await store.put("id:a1", Recorded(items, 5), ttl=60)
    assert await store.get("id:a1") == Recorded(items, 5)


async def test_a_response_the_memory_store_cannot_keep_is_skipped_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reply item holding something other than str, bytes, numbers or None (a hook
    could put one there) is not recorded, and says so; the request is not failed."""
    store = MemoryIdempotencyStore()
    odd = Reply("b1", 0, b"x", True, 200, [(b"x-odd", object())])  # type: ignore[list-item]
    with caplog.at_level(logging.WARNING, logger="kourier.server"):
        await store.put("id:b1", Recorded((odd,), 1), ttl=60)
    assert await store.get("id:b1") is None
    assert "the response to id:b1 is not recorded" in caplog.text


async def test_a_full_memory_store_leaves_the_garbage_collector_nothing_to_scan() -> None:
    """Recorded responses do not stay objects the collector tracks: a service keeps
    thousands of them, and tracked ones made every full collection slower and, by
    surviving young collections, more frequent (a 40-60 ms pause every second under
    load)."""
    store = MemoryIdempotencyStore()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"11")]
    gc.collect()
    before = len(gc.get_objects())
    for i in range(2000):
        reply = Reply(f"r{i}", 0, b'{"ok":true}', True, 200, list(headers), None, "orders")
        await store.put(f"id:r{i}", Recorded((reply,), 11), ttl=60)
    del reply
    gc.collect()
    assert len(store) == 2000
    assert len(gc.get_objects()) - before < 100


class SlowStore(MemoryIdempotencyStore):
    """A store whose look-ups take time, as a networked store's would."""

    async def get(self, key: str) -> Recorded | None:
        await asyncio.sleep(0.02)
        return await super().get(key)


class SlowPutStore(MemoryIdempotencyStore):
    """A store that takes time to record, as a networked store would."""

    async def put(self, key: str, recorded: Recorded, ttl: float) -> None:
        await asyncio.sleep(0.05)
        await super().put(key, recorded, ttl)


async def test_a_duplicate_arriving_while_the_store_records_waits_for_it() -> None:
    """Between the end of a run and its record landing, a duplicate gets the replay."""
    gate = Idempotency(SlowPutStore(), 60)
    assert await gate.claim("id:1") is None
    reply = Reply("1", 0, b"done", end=True, status=200)
    finishing = asyncio.create_task(gate.finish("id:1", [reply]))
    await asyncio.sleep(0.01)  # the store is still recording
    recorded = await gate.claim("id:1")
    assert recorded is not None and recorded.items == (reply,)
    await finishing
    assert await gate.claim("id:1") == recorded


async def test_concurrent_deliveries_run_once_with_a_slow_store() -> None:
    """Two deliveries of one request id that overlap run the handler once."""
    transport = MemoryTransport()
    await transport.ensure_topics([TopicSpec(SETTINGS.reply_topic, 1)])
    reader = transport.partition_reader(SETTINGS.reply_topic, 0)
    await reader.start()
    service = Service(
        apps.app,
        "orders",
        SETTINGS,
        transport=MemoryTransport(transport.broker),
        idempotency_store=SlowStore(),
    )
    async with service:
        w = Wire(transport, reader)
        apps.counter["n"] = 0
        first = await w.call("POST", "/count")
        await w.call("POST", "/count", id=first.id)
        replies = await w.replies(first.id, ends=2)
    assert apps.counter["n"] == 1
    assert [json.loads(r.body) for r in replies] == [{"n": 1}, {"n": 1}]


def _streaming_service(app: Any, broker: MemoryBroker) -> Service:
    return Service(app, "orders", SETTINGS, transport=ScriptedTransport(broker))


async def _wire_on(broker: MemoryBroker) -> Wire:
    transport = MemoryTransport(broker)
    await transport.ensure_topics([TopicSpec(SETTINGS.reply_topic, 1)])
    reader = transport.partition_reader(SETTINGS.reply_topic, 0)
    await reader.start()
    return Wire(transport, reader)


async def test_a_stream_longer_than_the_record_limit_is_not_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long stream is not held for the idempotency record: a repeat runs it again,
    and both callers get every item."""
    monkeypatch.setattr(reply_sink, "RECORD_MAX_BYTES", 100)
    runs = {"n": 0}
    app = FastAPI()

    @app.get("/long")
    async def long() -> StreamingResponse:
        runs["n"] += 1
        return StreamingResponse(iter([b"y" * 40 for _ in range(5)]))

    @app.get("/short")
    async def short() -> StreamingResponse:
        runs["n"] += 1
        return StreamingResponse(iter([b"z" * 40, b"z" * 40]))

    broker = MemoryBroker()
    w = await _wire_on(broker)
    async with _streaming_service(app, broker):
        first = await w.call("GET", "/long")
        await w.replies(first.id)
        await w.call("GET", "/long", id=first.id)
        replies = await w.replies(first.id, ends=2)
        assert runs["n"] == 2
        assert b"".join(r.body for r in replies) == b"y" * 400
        once = await w.call("GET", "/short")
        await w.replies(once.id)
        await w.call("GET", "/short", id=once.id)
        await w.replies(once.id, ends=2)
        assert runs["n"] == 3  # 80 bytes: recorded, and the repeat replayed


async def test_a_stream_written_without_awaiting_lets_the_loop_run_after_its_first_item() -> None:
    """An app that writes its items in a tight loop still gives the producer the loop
    after item 0, so the first item is not held until a whole batch has filled."""
    observed: list[int] = []
    produced = {"n": -1}  # the index of the last line the app wrote
    app = FastAPI()

    @app.get("/tight")
    async def tight() -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:  # awaits nothing between lines
            for i in range(50):
                produced["n"] = i
                yield b"line\n"

        return StreamingResponse(lines())

    async def observer() -> None:
        while True:
            if 0 <= produced["n"] < 49:  # the stream is being written
                observed.append(produced["n"])
            await asyncio.sleep(0)

    broker = MemoryBroker()
    w = await _wire_on(broker)
    async with _streaming_service(app, broker):
        watching = asyncio.create_task(observer())
        try:
            request = await w.call("GET", "/tight")
            replies = await w.replies(request.id)
        finally:
            watching.cancel()
    assert len(replies) == 51  # 50 lines, then the end marker
    # The observer ran while the stream was being written, first right after item 0.
    assert observed and observed[0] <= 1


def test_settled_acknowledgements_are_dropped_and_failures_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pruning of a long stream's acks keeps the pending ones, logs the failed ones."""
    loop = asyncio.new_event_loop()
    try:
        done, failed, pending = (loop.create_future() for _ in range(3))
        done.set_result(None)
        failed.set_exception(PublishError("no ack"))
        with caplog.at_level(logging.ERROR, logger="kourier.server"):
            assert reply_sink.pending([done, failed, pending]) == [pending]
        assert "no ack" in caplog.text
    finally:
        loop.close()
