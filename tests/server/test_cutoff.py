"""Handlers cut short on the in-memory broker: deadline, caller's cancel, time limit, drain.

A real ``Service`` serves ``tests/e2e/cancel_app.py`` and a real ``Client`` calls it;
the app records in ``EVENTS`` when a handler starts, produces and sees
``CancelledError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from kourier import protocol
from kourier.client import Client, KourierTransport
from kourier.errors import ReplyTimeout
from kourier.protocol import Reply, ReplyAddress, Request
from kourier.server import cutoff as cutoff_module
from kourier.server.cutoff import HandlerCut, RunningHandlers
from kourier.server.serve import H_DEAD_REASON, Service
from kourier.settings import Settings
from kourier.transports.base import PartitionReader, Record
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.client.fake_service import ensure_service
from tests.e2e import cancel_app
from tests.e2e.cancel_app import EVENTS
from tests.server.conftest import eventually

SETTINGS = Settings(
    commit_interval=0.01,
    default_timeout=2.0,
    message_timeout=0.3,
    retry_attempts=2,
    retry_backoff=0.05,
    drain_timeout=0.2,
    concurrency=2,
)
SERVICE = cancel_app.SERVICE


class Setup:
    def __init__(self, broker: MemoryBroker, service: Service, client: Client) -> None:
        self.broker = broker
        self.service = service
        self.client = client
        self.transport = MemoryTransport(broker)

    async def raw(self, target: str, *, deadline_in: float) -> tuple[Request, PartitionReader]:
        """Publish a two-way request with a deadline ``deadline_in`` s ahead, bypassing
        the client (which would send a cancel when its own timeout fires)."""
        topic = SETTINGS.reply_topic
        reader = self.transport.partition_reader(topic, 0)
        await reader.start()
        request = Request(
            protocol.new_request_id(),
            "GET",
            target,
            deadline_ms=protocol.now_ms() + int(deadline_in * 1000),
            reply_to=ReplyAddress(topic, 0),
        )
        key, value, headers = protocol.encode_request(request)
        await self.transport.publish(
            SETTINGS.request_topic(SERVICE), value, key=key, headers=headers
        )
        return request, reader


async def replies_to(reader: PartitionReader, request_id: str, timeout: float = 3.0) -> list[Reply]:
    """The reply items of ``request_id`` up to its end marker."""
    items: list[Reply] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while not items or not items[-1].end:
        assert asyncio.get_running_loop().time() < deadline, f"no end marker: {items}"
        for record in await reader.fetch(0.1):
            reply = protocol.decode_reply(record.value, record.headers)
            if reply.request_id == request_id:
                items.append(reply)
    await reader.stop()
    return items


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    EVENTS.clear()
    broker = MemoryBroker()
    async with Client(SETTINGS, transport=MemoryTransport(broker)) as inner:
        service = Service(
            cancel_app.make_app(inner), SERVICE, SETTINGS, transport=MemoryTransport(broker)
        )
        await service.start()
        try:
            async with Client(SETTINGS, transport=MemoryTransport(broker)) as client:
                yield Setup(broker, service, client)
        finally:
            await service.stop()


async def test_a_two_way_handler_is_cancelled_at_its_deadline_and_its_slot_freed(
    setup: Setup,
) -> None:
    """A handler still running at the request's deadline sees CancelledError, the reply
    is a 504 with an error id, the run counts as expired, and its slot serves others."""
    hung = [await setup.raw(f"/hang/d{i}", deadline_in=0.3) for i in range(2)]  # every slot
    for request, reader in hung:
        [reply] = await replies_to(reader, request.id)
        assert reply.status == 504 and reply.error_id is not None
        assert b"past its deadline" in reply.body
    assert {"cancelled d0", "cancelled d1"} <= set(EVENTS)
    await eventually(lambda: setup.service.stats.cut_at_deadline == 2)
    assert setup.service.stats.expired == 2
    response = await setup.client.request(SERVICE, "GET", "/time-left", timeout=2)
    assert response.status_code == 200
    assert len(setup.service.running) == 0


async def test_a_stream_that_stalls_past_its_window_ends_with_the_error_end_marker(
    setup: Setup,
) -> None:
    """A stream that started, then sends nothing for longer than its request had at the
    start (a little more), is cut, and its last item is an end marker with an error id,
    so a caller sees a broken stream, not a short one."""
    request, reader = await setup.raw("/stream/s?ms=700", deadline_in=0.3)
    items = await replies_to(reader, request.id)
    assert items[0].status == 200 and len(items) == 2
    assert items[-1].end and items[-1].error_id is not None
    # The app's generator sees the cancellation as its task unwinds, which may finish
    # just after the end marker went out.
    await eventually(lambda: "cancelled s" in EVENTS)


async def test_a_stream_that_keeps_producing_outlives_its_first_deadline(
    setup: Setup,
) -> None:
    """A stream's deadline bounds the wait for its start and each wait between items
    (as an HTTP read timeout does), not its length: one that keeps producing runs on
    past the first deadline while its caller reads, and stops when the caller leaves."""
    async with setup.client.stream(SERVICE, "GET", "/stream/p?ms=20", timeout=0.3) as reply:
        started = asyncio.get_running_loop().time()
        count = 0
        async for _ in reply:
            count += 1
            if asyncio.get_running_loop().time() - started > 1.0:
                break
    assert count > 20
    assert "cancelled p" not in EVENTS[: EVENTS.index(f"item p {count - 1}")]
    await eventually(lambda: "cancelled p" in EVENTS)  # the caller left: its cancel


async def test_cancelling_the_waiting_task_cancels_the_handler(setup: Setup) -> None:
    """A caller whose awaiting task is cancelled publishes a cancel; the handler sees
    CancelledError long before its deadline, and the service counts it."""
    call = asyncio.create_task(setup.client.request(SERVICE, "GET", "/hang/t", timeout=30))
    await eventually(lambda: "start t" in EVENTS)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await eventually(lambda: "cancelled t" in EVENTS, timeout=2)
    await eventually(lambda: setup.service.stats.cancelled == 1)
    assert setup.client.cancels.sent == 1
    assert setup.service.cancels.cut == 1


async def test_closing_a_stream_early_stops_the_handler_producing(setup: Setup) -> None:
    """Leaving ``client.stream`` before the end marker cancels the handler: it sees
    CancelledError and produces no more items."""
    async with setup.client.stream(SERVICE, "GET", "/stream/c") as reply:
        seen = 0
        async for _ in reply.aiter_lines():
            seen += 1
            if seen == 3:
                break
    await eventually(lambda: "cancelled c" in EVENTS, timeout=2)
    produced = sum(line.startswith("item c ") for line in EVENTS)
    await asyncio.sleep(0.2)
    assert sum(line.startswith("item c ") for line in EVENTS) == produced


async def test_closing_an_httpx_response_early_cancels_the_handler(setup: Setup) -> None:
    """Through KourierTransport, closing a streamed httpx response before its end cancels
    the handler."""
    transport = KourierTransport(setup.client)
    http = httpx.AsyncClient(transport=transport, base_url=f"http://{SERVICE}")
    async with http, http.stream("GET", "/stream/h") as response:
        async for _ in response.aiter_lines():
            break
    await eventually(lambda: "cancelled h" in EVENTS, timeout=2)


async def test_the_callers_timeout_cancels_the_handler(setup: Setup) -> None:
    """A call that ends in ReplyTimeout sends a cancel too: nobody waits for the work."""
    with pytest.raises(ReplyTimeout):
        await setup.client.request(SERVICE, "GET", "/hang/o", timeout=0.3)
    await eventually(lambda: "cancelled o" in EVENTS, timeout=2)
    await eventually(lambda: setup.client.cancels.sent == 1)


async def test_a_cancel_that_comes_first_skips_its_request(setup: Setup) -> None:
    """A cancel that arrives before its request (a backlog) is remembered: the request
    is skipped when it comes, and the handler never starts."""
    request_id = protocol.new_request_id()
    key, value, headers = protocol.encode_cancel(protocol.Cancel(request_id, "cancelled"))
    await setup.transport.publish(SETTINGS.cancel_topic(SERVICE), value, key=key, headers=headers)
    await eventually(lambda: setup.service.cancels.received == 1)
    await setup.client.send(SERVICE, "GET", "/hang/first", request_id=request_id)
    await setup.client.request(SERVICE, "GET", "/time-left")  # the send was fetched before
    await eventually(lambda: setup.service.stats.cancelled == 1)
    assert "start first" not in EVENTS


async def test_a_hung_one_way_handler_is_retried_then_dead_lettered(setup: Setup) -> None:
    """A one-way handler past message_timeout is cut, retried, and dead-lettered with a
    reason that says it timed out; other work goes on meanwhile."""
    topic = SETTINGS.dead_letter_topic(SERVICE)
    request_id = await setup.client.send(SERVICE, "POST", "/hang/m")
    response = await setup.client.request(SERVICE, "GET", "/time-left")
    assert response.status_code == 200, "a second slot answers while the first hangs"
    await eventually(lambda: setup.service.stats.dead_letters == 1, timeout=5)
    assert EVENTS.count("start m") == 2 and EVENTS.count("cancelled m") == 2
    assert setup.service.stats.timed_out == 2
    [letter] = [r for p in range(SETTINGS.partitions) for r in await _all(setup, topic, p)]
    assert protocol.request_id_of(letter.headers) == request_id
    reason = dict(letter.headers)[H_DEAD_REASON]
    assert reason.startswith(b"handler timed out (time limit 0.3 s) after 2 attempts")


async def _all(setup: Setup, topic: str, partition: int) -> list[Record]:
    reader = setup.transport.partition_reader(topic, partition, from_beginning=True)
    await reader.start()
    try:
        return list(await reader.fetch(0.05))
    finally:
        await reader.stop()


async def test_a_nested_call_inherits_the_deadline_and_names_its_parent(setup: Setup) -> None:
    """A call made inside a handler is bounded by the time its request has left, not by
    its own 60 s, and carries the handler's request id as its parent."""
    response = await setup.client.request(SERVICE, "GET", "/nested", timeout=1.5)
    body = response.json()
    assert body["request_id"] == response.request_id
    assert body["nested"]["parent_id"] == response.request_id
    assert body["nested"]["request_id"] != response.request_id
    assert 0 < body["nested"]["time_left"] <= 1.5


async def test_the_drain_cancels_running_handlers_and_their_records_come_back() -> None:
    """At the drain timeout a running handler sees CancelledError; its record is not
    committed, so the next instance gets it again."""
    EVENTS.clear()
    broker = MemoryBroker()
    settings = SETTINGS.replace(message_timeout=30.0)
    async with Client(settings, transport=MemoryTransport(broker)) as client:
        app = cancel_app.make_app(client)
        first = Service(app, SERVICE, settings, transport=MemoryTransport(broker))
        await first.start()
        await client.send(SERVICE, "POST", "/hang/drain")
        await eventually(lambda: "start drain" in EVENTS)
        await first.stop()
        assert "cancelled drain" in EVENTS
        second = Service(app, SERVICE, settings, transport=MemoryTransport(broker))
        await second.start()
        try:
            await eventually(lambda: EVENTS.count("start drain") == 2)
        finally:
            await second.stop()


async def test_services_without_a_cancels_topic_still_serve(setup: Setup) -> None:
    """A cancel to a service whose cancels topic does not exist is not sent, and the
    caller never sees an error for it."""
    await ensure_service(setup.transport, SETTINGS, "old")  # topic and a live instance
    with pytest.raises(ReplyTimeout):
        await setup.client.request("old", "GET", "/", timeout=0.1)
    await eventually(lambda: setup.client.cancels.not_sent == 1)
    assert setup.client.cancels.sent == 0


async def test_a_cut_before_the_run_starts_means_it_never_starts() -> None:
    """A run cut before it began raises HandlerCut at once and never runs its work."""
    running = RunningHandlers(message_timeout=1.0)
    request = Request("r-early", "GET", "/", reply_to=ReplyAddress("r", 0))
    cutoff = running.cutoff(request)
    cutoff.cut()
    ran = False

    async def work() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(HandlerCut, match="cancelled by its caller"):
        await cutoff.run(work())
    assert not ran


async def test_the_apps_own_timeout_is_not_taken_for_a_cut() -> None:
    """A TimeoutError the app raises itself (say, from a call of its own) stays as it is."""
    cutoff = RunningHandlers(message_timeout=5.0).cutoff(Request("r-own", "POST", "/"))

    async def work() -> None:
        raise TimeoutError("the database did not answer")

    with pytest.raises(TimeoutError, match="database") as raised:
        await cutoff.run(work())
    assert not isinstance(raised.value, HandlerCut)


async def test_a_handler_that_swallows_the_cancellation_finishes_as_it_likes() -> None:
    """What cannot be cut: a handler that catches CancelledError and returns is done."""
    cutoff = RunningHandlers(message_timeout=0.05).cutoff(Request("r-stubborn", "POST", "/"))

    async def work() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)

    await cutoff.run(work())  # no HandlerCut: it returned


async def test_remembered_cancels_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most CANCEL_MEMORY_IDS cancelled ids are kept, the oldest dropped first."""
    monkeypatch.setattr(cutoff_module, "CANCEL_MEMORY_IDS", 3)
    running = RunningHandlers(message_timeout=1.0)
    for n in range(5):
        running.cancel(f"id-{n}")
    assert [running.was_cancelled(f"id-{n}") for n in range(5)] == [False, False, True, True, True]


async def test_one_way_runs_share_one_timer_and_each_is_cut_at_its_own_limit() -> None:
    """One-way runs started at different times are each cut at their own limit (the
    shared timer moves on to the next run), a run that ends first is never cut, and no
    run is left watched."""
    running = RunningHandlers(message_timeout=0.2)
    loop = asyncio.get_running_loop()
    cut_at: dict[str, float] = {}

    async def attempt(name: str, seconds: float) -> None:
        started = loop.time()
        try:
            await running.cutoff(Request(name, "POST", "/")).run(asyncio.sleep(seconds))
        except HandlerCut as cut:
            assert cut.reason == "time limit"
            cut_at[name] = loop.time() - started

    first = asyncio.create_task(attempt("first", 10))
    quick = asyncio.create_task(attempt("quick", 0.05))
    await asyncio.sleep(0.1)
    second = asyncio.create_task(attempt("second", 10))
    await asyncio.gather(first, quick, second)
    assert set(cut_at) == {"first", "second"}
    assert all(0.19 <= took < 0.35 for took in cut_at.values()), cut_at
    assert len(running.limits) == 0


async def test_a_drain_during_a_cut_still_cancels_the_run() -> None:
    """A run cancelled from outside (a drain) as well as cut ends with CancelledError,
    not as a cut, as under asyncio.timeout."""
    running = RunningHandlers(message_timeout=5.0)
    cutoff = running.cutoff(Request("r-drained", "GET", "/", reply_to=ReplyAddress("r", 0)))
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(cutoff.run(work()))
    await started.wait()
    cutoff.cut()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
