"""A service on the in-memory broker, driven with raw wire records (no client wing)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import pytest

from kourier import protocol
from kourier.server.serve import H_DEAD_REASON, H_DEAD_SOURCE, Service
from kourier.transports.base import TopicSpec
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests import apps
from tests.server.conftest import REPLY_TO, SETTINGS, Wire, eventually


async def test_a_request_reaches_the_route_with_path_query_headers_and_state(
    wire: tuple[Wire, Service],
) -> None:
    """Path parameters, query, headers and lifespan state reach the handler as over HTTP."""
    w, _ = wire
    request = await w.call("GET", "/hello/a%20b?q=1&r=x", headers=[(b"x-test", b"yes")])
    [reply] = await w.replies(request.id)
    assert reply.status == 200 and reply.end
    assert json.loads(reply.body) == {
        "hello": "a b",
        "greeting": "hello",
        "query": {"q": "1", "r": "x"},
        "x-test": "yes",
        "host": "orders",
    }


async def test_validation_errors_and_unknown_routes_mean_what_they_mean_in_http(
    wire: tuple[Wire, Service],
) -> None:
    """A bad body gives FastAPI's 422 and an unknown path its 404."""
    w, _ = wire
    bad = await w.call(
        "POST",
        "/orders",
        body=b'{"quantity": "x"}',
        headers=[(b"content-type", b"application/json")],
    )
    missing = await w.call("GET", "/nowhere")
    assert (await w.replies(bad.id))[0].status == 422
    assert (await w.replies(missing.id))[0].status == 404


async def test_a_streamed_response_becomes_ordered_items_with_an_end_marker(
    wire: tuple[Wire, Service],
) -> None:
    """Each chunk is one item; item 0 has the status; the last item ends the stream."""
    w, _ = wire
    request = await w.call("GET", "/items?n=4")
    replies = await w.replies(request.id)
    assert [r.seq for r in replies] == [0, 1, 2, 3, 4]
    assert replies[0].status == 200
    assert (b"content-type", b"application/x-ndjson") in replies[0].headers
    assert [json.loads(r.body) for r in replies[:4]] == [{"i": i} for i in range(4)]
    assert replies[-1].end and replies[-1].body == b""
    assert not any(r.end for r in replies[:-1])


async def test_a_big_body_is_split_into_items(wire: tuple[Wire, Service]) -> None:
    """A body over max_reply_bytes arrives in several items that add up to it."""
    w, _ = wire
    request = await w.call("GET", "/big?size=2500")
    replies = await w.replies(request.id)
    assert len(replies) >= 3
    assert all(len(r.body) <= SETTINGS.max_reply_bytes for r in replies)
    assert b"".join(r.body for r in replies) == b"x" * 2500


async def test_an_exception_gives_500_with_an_error_id_that_is_logged(
    wire: tuple[Wire, Service], caplog: pytest.LogCaptureFixture
) -> None:
    """The caller gets 500 and an error id; the same id is in the service's log."""
    w, service = wire
    request = await w.call("GET", "/boom")
    [reply] = await w.replies(request.id)
    assert reply.status == 500
    assert reply.error_id
    assert (b"x-error-id", reply.error_id.encode()) in reply.headers
    await eventually(lambda: service.stats.failed == 1)
    assert any(reply.error_id in r.getMessage() for r in caplog.records)


async def test_an_exception_mid_stream_ends_the_stream_with_an_error_id(
    wire: tuple[Wire, Service],
) -> None:
    """Once items are out, a failure ends the reply with an error id, not a clean end."""
    w, _ = wire
    request = await w.call("GET", "/broken-stream")
    replies = await w.replies(request.id)
    assert replies[0].body == b"first\n"
    assert replies[-1].end and replies[-1].error_id


async def test_a_failure_after_the_status_but_before_any_body_is_a_whole_500(
    wire: tuple[Wire, Service],
) -> None:
    """The app's 200 never left: the caller gets a 500 with the error id, not a 200."""
    w, _ = wire
    request = await w.call("GET", "/broken-before-body")
    [reply] = await w.replies(request.id)
    assert reply.status == 500 and reply.end and reply.error_id
    assert json.loads(reply.body) == {"detail": "Internal Server Error", "error_id": reply.error_id}


async def test_one_way_messages_run_the_handler_and_publish_nothing(
    wire: tuple[Wire, Service],
) -> None:
    """A message without reply-to is handled and never answered."""
    w, service = wire
    apps.events.clear()
    await w.call(
        "POST",
        "/events",
        reply_to=None,
        body=b'{"kind": "ping"}',
        headers=[(b"content-type", b"application/json")],
    )
    for _ in range(100):
        if apps.events:
            break
        await asyncio.sleep(0.01)
    assert apps.events == [{"kind": "ping"}]
    assert await w.reader.fetch(0.1) == []
    await eventually(lambda: service.stats.one_way == 1)


async def test_a_request_past_its_deadline_is_skipped(wire: tuple[Wire, Service]) -> None:
    """The service does not run work whose caller has given up, and says nothing."""
    w, service = wire
    apps.events.clear()
    await w.call(
        "POST",
        "/events",
        deadline_ms=protocol.now_ms() - 1,
        body=b"{}",
        headers=[(b"content-type", b"application/json")],
    )
    live = await w.call("GET", "/hello/x")
    replies = await w.replies(live.id)
    assert replies[0].status == 200
    assert apps.events == []
    assert service.stats.expired == 1


async def test_an_oversized_request_gets_413_without_running_the_app(
    wire: tuple[Wire, Service],
) -> None:
    """A body over max_request_bytes is answered 413; the handler never sees it."""
    w, service = wire
    request = await w.call("POST", "/echo", body=b"x" * 6000)
    [reply] = await w.replies(request.id)
    assert reply.status == 413
    assert service.stats.handled == 0


async def test_a_malformed_record_is_dead_lettered_answered_and_survived(
    wire: tuple[Wire, Service],
) -> None:
    """A broken record goes to the dead-letter topic, gets a 400, and the next one works."""
    w, service = wire
    topic = SETTINGS.request_topic("orders")
    await w.transport.publish(topic, b"junk", headers=[("kourier-v", b"1")])
    bad_id = protocol.new_request_id()
    await w.transport.publish(
        topic,
        b"",
        headers=[
            ("kourier-v", b"1"),
            ("kourier-type", b"request"),
            ("kourier-id", bad_id.encode()),
            ("kourier-reply-to", REPLY_TO.encode()),
            ("kourier-method", b"GET"),
            ("kourier-target", b"no-leading-slash"),
        ],
    )
    [reply] = await w.replies(bad_id)
    assert reply.status == 400
    assert b"origin-form" in reply.body
    good = await w.call("GET", "/hello/after")
    assert (await w.replies(good.id))[0].status == 200
    dead = w.transport.broker.topics[SETTINGS.dead_letter_topic("orders")]
    letters = [r for partition in dead for r in partition]
    assert len(letters) == 2
    reasons = {dict(r.headers)[H_DEAD_REASON] for r in letters}
    assert any(b"missing kourier-type" in reason for reason in reasons)
    assert all(dict(r.headers)[H_DEAD_SOURCE].startswith(topic.encode()) for r in letters)
    assert service.stats.malformed == 2


async def test_lifespan_runs_at_start_and_stop() -> None:
    """Startup runs before the first request; shutdown when the service stops."""
    apps.lifespan_log.clear()
    service = Service(apps.app, "orders", SETTINGS, transport=MemoryTransport())
    await service.start()
    assert apps.lifespan_log == ["startup"]
    await service.stop()
    assert apps.lifespan_log == ["startup", "shutdown"]


async def test_an_app_without_lifespan_support_is_still_served() -> None:
    """A bare ASGI app that raises on the lifespan scope is served without it."""

    async def bare(scope: dict[str, object], receive: object, send: object) -> None:
        assert scope["type"] == "http"

    async with Service(bare, "bare", SETTINGS, transport=MemoryTransport()) as service:  # type: ignore[arg-type]
        assert service.ready.is_set()


async def test_an_app_that_returns_on_the_lifespan_scope_is_served_at_once() -> None:
    """A bare app that just returns for non-HTTP scopes starts without waiting."""

    async def bare(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] != "http":
            return

    service = Service(bare, "bare", SETTINGS, transport=MemoryTransport())  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        await service.start()
    await service.stop()


async def test_serve_moves_what_exists_at_start_out_of_the_collectors_way() -> None:
    """By the time ``serve`` reports ready, the app and its libraries are frozen, so the
    full collections a busy service runs every second or so do not walk them."""
    import gc
    import os
    import signal

    from kourier.server.serve import serve

    frozen_at_ready: list[int] = []

    def ready(instance: Service) -> None:
        frozen_at_ready.append(gc.get_freeze_count())
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)

    transport = MemoryTransport()
    try:
        async with asyncio.timeout(10):
            await serve(apps.app, "orders", SETTINGS, transport=transport, ready=ready)
    finally:
        gc.unfreeze()
    assert frozen_at_ready and frozen_at_ready[0] > 1000


async def test_a_streams_first_item_is_acknowledged_before_the_app_writes_more() -> None:
    """An app that writes its items without awaiting anything still gets its status and
    first item out first: the service hands the loop back to it only once the broker has
    item 0, so the caller does not wait for the app's next pause to see the stream begin."""
    from tests.scripted import ScriptedTransport

    events: list[str] = []

    def script(topic: str, value: bytes) -> asyncio.Future[None] | None:
        if topic != SETTINGS.reply_topic:
            return None
        loop = asyncio.get_running_loop()
        events.append(f"published {value!r}")
        ack: asyncio.Future[None] = loop.create_future()

        def acknowledge() -> None:
            events.append(f"acked {value!r}")
            ack.set_result(None)

        loop.call_later(0.02, acknowledge)
        return ack

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"%d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    broker = MemoryBroker()
    transport = MemoryTransport(broker)
    await transport.ensure_topics([TopicSpec(SETTINGS.reply_topic, 1)])
    reader = transport.partition_reader(SETTINGS.reply_topic, 0)
    await reader.start()
    service = Service(app, "orders", SETTINGS, transport=ScriptedTransport(broker, script))
    async with service:
        w = Wire(transport, reader)
        request = await w.call("GET", "/items")
        replies = await w.replies(request.id)
    assert [r.body for r in replies] == [b"0\n", b"1\n", b"2\n", b""]
    assert events.index("acked b'0\\n'") < events.index("published b'1\\n'")
