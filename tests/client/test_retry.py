"""Caller retries: which calls repeat, with what id and attempt, within one deadline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from kourier import protocol
from kourier.client import Client, KourierTransport, Retry
from kourier.errors import ReplyTimeout, SettingsError
from kourier.protocol import Request
from kourier.settings import Settings
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.client.conftest import Serve
from tests.client.fake_service import Replies, echo, ignore_first, silent, status_first

#: Quick attempts, so a test waits tenths of a second, not the default shares.
QUICK = Retry(attempts=3, backoff=0.01, attempt_timeout=0.1)


@pytest.fixture
async def retrying(settings: Settings, broker: MemoryBroker) -> AsyncIterator[Client]:
    """A client whose default policy is ``QUICK``."""
    async with Client(settings, transport=MemoryTransport(broker), retry=QUICK) as started:
        yield started


def published(broker: MemoryBroker, settings: Settings) -> list[Request]:
    logs = broker.topics.get(settings.request_topic("orders"), [])
    return [protocol.decode_request(r.key, r.value, r.headers) for log in logs for r in log]


def attempt_headers(broker: MemoryBroker, settings: Settings) -> list[bytes | None]:
    logs = broker.topics.get(settings.request_topic("orders"), [])
    values = [dict(r.headers).get(protocol.H_ATTEMPT) for log in logs for r in log]
    return sorted(values, key=lambda value: value or b"")


# -- what is retried -------------------------------------------------------------------


async def test_get_is_retried_with_the_same_id_and_the_next_attempt(
    retrying: Client, serve: Serve, broker: MemoryBroker, settings: Settings
) -> None:
    """A GET whose first attempt goes unanswered succeeds on attempt 2 under the same id."""
    service = await serve(ignore_first(1))
    response = await retrying.request("orders", "GET", "/orders/17", timeout=2)
    assert response.status_code == 200
    assert response.json()["attempt"] == 2
    first, second = service.requests
    assert first.id == second.id == response.request_id
    assert (first.attempt, second.attempt) == (1, 2)
    assert attempt_headers(broker, settings) == [None, b"2"]
    assert retrying.stats.retries == 1 and retrying.stats.timeouts == 0
    assert retrying.inbox.waiting == 0


async def test_post_is_not_retried(
    retrying: Client, serve: Serve, broker: MemoryBroker, settings: Settings
) -> None:
    """A POST without a key or Idempotency-Key is sent once and fails with one ReplyTimeout."""
    await serve(silent)
    with pytest.raises(ReplyTimeout):
        await retrying.request("orders", "POST", "/orders", json={}, timeout=0.3)
    assert len(published(broker, settings)) == 1
    assert retrying.stats.retries == 0 and retrying.stats.timeouts == 1
    assert retrying.inbox.waiting == 0


@pytest.mark.parametrize(
    "options",
    [
        {"headers": {"Idempotency-Key": "order-17-create"}},
        {"key": "order-17"},
        {"retry": Retry(attempts=3, backoff=0.01, attempt_timeout=0.1, unsafe=True)},
    ],
    ids=["idempotency-key", "ordering-key", "unsafe"],
)
async def test_post_is_retried_when_safe_or_asked(
    retrying: Client, serve: Serve, options: dict[str, object]
) -> None:
    """A POST with an Idempotency-Key, an ordering key or unsafe=True is retried."""
    service = await serve(ignore_first(1))
    response = await retrying.request("orders", "POST", "/orders", **options)  # type: ignore[arg-type]
    assert response.json()["attempt"] == 2
    assert [r.attempt for r in service.requests] == [1, 2]
    assert retrying.inbox.waiting == 0


async def test_no_retries_without_a_policy(client: Client, serve: Serve) -> None:
    """A client without a default policy sends a GET once; retry=False overrides a default."""
    service = await serve(silent)
    with pytest.raises(ReplyTimeout):
        await client.request("orders", "GET", "/", timeout=0.2)
    async with Client(client.settings, transport=client.transport, retry=QUICK) as retrying:
        with pytest.raises(ReplyTimeout):
            await retrying.request("orders", "GET", "/", timeout=0.2, retry=False)
    assert [r.attempt for r in service.requests] == [1, 1]


# -- statuses --------------------------------------------------------------------------


async def test_503_is_retried(retrying: Client, serve: Serve) -> None:
    """A 503 reply (in statuses) is tried again and the next attempt's answer is returned."""
    service = await serve(status_first(503))
    response = await retrying.request("orders", "GET", "/")
    assert response.status_code == 200 and response.json()["attempt"] == 2
    assert len(service.requests) == 2
    assert retrying.inbox.waiting == 0


async def test_status_not_in_statuses_is_returned(retrying: Client, serve: Serve) -> None:
    """A 500 is an answer, not a reason to retry, unless statuses names it."""
    service = await serve(status_first(500))
    assert (await retrying.request("orders", "GET", "/")).status_code == 500
    assert len(service.requests) == 1


async def test_503_on_the_last_attempt_is_the_response(retrying: Client, serve: Serve) -> None:
    """When every attempt gets 503, the last 503 is returned as the response."""
    service = await serve(status_first(503, count=99))
    response = await retrying.request("orders", "GET", "/")
    assert response.status_code == 503 and response.json() == {"attempt": 3}
    assert len(service.requests) == 3


# -- one deadline ----------------------------------------------------------------------


async def test_attempts_share_the_call_deadline(
    client: Client, serve: Serve, broker: MemoryBroker, settings: Settings
) -> None:
    """A call with timeout=1.0 and 5 attempts raises ReplyTimeout after about 1 s, not 5."""
    await serve(silent)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ReplyTimeout):
        await client.request("orders", "GET", "/", timeout=1.0, retry=Retry(attempts=5))
    assert 1.0 <= loop.time() - started < 1.25
    attempts = sorted(r.attempt for r in published(broker, settings))
    assert attempts == list(range(1, len(attempts) + 1)) and len(attempts) >= 2
    assert client.stats.timeouts == 1
    assert client.inbox.waiting == 0


async def test_every_attempt_carries_the_call_deadline(retrying: Client, serve: Serve) -> None:
    """Retries do not move the deadline the service sees."""
    service = await serve(ignore_first(2))
    await retrying.request("orders", "GET", "/", timeout=2)
    assert len({r.deadline_ms for r in service.requests}) == 1


async def test_late_reply_of_attempt_1_completes_the_call_during_attempt_2(
    retrying: Client, serve: Serve
) -> None:
    """The answer to attempt 1, sent while attempt 2 is in flight, ends the call."""
    second_arrived = asyncio.Event()

    async def slow_first(request: Request, replies: Replies) -> None:
        if request.attempt == 1:
            await second_arrived.wait()
            await echo(request, replies)
        else:
            second_arrived.set()

    service = await serve(slow_first)
    policy = Retry(attempts=3, backoff=0.01, attempt_timeout=0.2)
    response = await retrying.request("orders", "GET", "/", timeout=5, retry=policy)
    assert response.json()["attempt"] == 1
    assert [r.attempt for r in service.requests] == [1, 2]
    assert retrying.inbox.waiting == 0


# -- streams, httpx, bookkeeping -------------------------------------------------------


async def test_stream_is_retried_before_item_0(retrying: Client, serve: Serve) -> None:
    """Entering a stream whose first attempt goes unanswered retries it."""
    await serve(ignore_first(1))
    async with retrying.stream("orders", "GET", "/") as stream:
        assert stream.status_code == 200
        assert b'"attempt": 2' in await stream.aread()
    assert retrying.inbox.waiting == 0


async def test_stream_is_not_retried_after_its_first_item(
    retrying: Client, serve: Serve, broker: MemoryBroker, settings: Settings
) -> None:
    """A stream that stalls after item 0 fails with ReplyTimeout; nothing is sent again."""

    async def stalls(request: Request, replies: Replies) -> None:
        await replies.item(0, b"first")

    await serve(stalls)
    async with retrying.stream("orders", "GET", "/", timeout=0.3) as stream:
        chunks = aiter(stream)
        assert await anext(chunks) == b"first"
        with pytest.raises(ReplyTimeout):
            await anext(chunks)
    assert len(published(broker, settings)) == 1
    assert retrying.stats.retries == 0
    assert retrying.inbox.waiting == 0


async def test_httpx_retry_extension_and_client_default(retrying: Client, serve: Serve) -> None:
    """Through httpx, the 'retry' extension sets the policy; without it, the client's applies."""
    await serve(ignore_first(1))
    async with httpx.AsyncClient(
        transport=KourierTransport(retrying), base_url="http://orders"
    ) as http:
        assert (await http.get("/a")).json()["attempt"] == 2
        policy = Retry(attempts=2, backoff=0.01, attempt_timeout=0.1, unsafe=True)
        posted = await http.post("/b", extensions={"kourier": {"retry": policy}})
        assert posted.json()["attempt"] == 2
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/c", timeout=0.3, extensions={"kourier": {"retry": False}})
    assert retrying.inbox.waiting == 0


async def test_each_retry_is_logged_at_info(
    retrying: Client, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """A retry logs the request id and the attempt number at info."""
    await serve(ignore_first(1))
    with caplog.at_level(logging.INFO, "kourier.client"):
        response = await retrying.request("orders", "GET", "/")
    [record] = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert response.request_id in record.getMessage()
    assert "attempt 2 of 3" in record.getMessage()


async def test_waiter_map_is_empty_after_retried_calls(retrying: Client, serve: Serve) -> None:
    """Retried, timed-out, 503-retried and cancelled-while-retrying calls leave no waiter."""
    await serve(ignore_first(1))
    await serve(status_first(503), service="busy")
    await serve(silent, service="quiet")
    await retrying.request("orders", "GET", "/")
    await retrying.request("busy", "GET", "/")
    with pytest.raises(ReplyTimeout):
        await retrying.request("quiet", "GET", "/", timeout=0.3)
    call = asyncio.create_task(retrying.request("quiet", "GET", "/", timeout=5))
    await asyncio.sleep(0.15)  # past attempt 1's share: the call is between attempts
    assert retrying.inbox.waiting == 1
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    assert retrying.inbox.waiting == 0
    assert retrying.stats.requests == 4


def test_retry_policy_is_validated(settings: Settings) -> None:
    """Bad attempts, backoffs or a retry that is no Retry raise SettingsError."""
    with pytest.raises(SettingsError, match="attempts"):
        Retry(attempts=0)
    with pytest.raises(SettingsError, match="backoff"):
        Retry(backoff=-1)
    with pytest.raises(SettingsError, match="attempt_timeout"):
        Retry(attempt_timeout=0)
    with pytest.raises(SettingsError, match="retry"):
        Client(settings, transport=MemoryTransport(), retry=3)  # type: ignore[arg-type]


def test_backoff_doubles_up_to_its_cap() -> None:
    """The delay after attempt n is backoff * 2**(n-1), at most backoff_max."""
    policy = Retry(attempts=6, backoff=0.5, backoff_max=3)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
