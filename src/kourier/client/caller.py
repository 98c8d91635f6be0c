"""The native caller: two-way requests, one-way sends, streamed replies, scatter-gather.

``Client`` turns a call into a request record on the service's request topic and
waits for the reply records in its ``ReplyInbox``. Every call has a deadline, carried
in the record so the service can skip work nobody waits for any more. A two-way call
may be repeated under a ``Retry`` policy (``client/retry.py``); its request and
response pass the caller's hooks (``client/hooks.py``).

It must never retry a call unless a policy asks for it and the call is safe to repeat
(see ``retry.py``), never let retries outlive the call's one deadline, never send a
record before the call is validated (size, reserved headers; after the request hooks
ran), and never keep a waiter after its call is over.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncIterator, Generator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from kourier import deadline, protocol
from kourier.client.calls import Call, observe
from kourier.client.cancel import CancelSender
from kourier.client.hooks import CallerHooks, Hook
from kourier.client.lookup import ServiceLookup
from kourier.client.replies import ReplyInbox, ReplyWaiter
from kourier.client.requests import (
    Headers,
    Key,
    Params,
    body_of,
    check_method,
    target_of,
    user_headers,
)
from kourier.client.responses import ReplyStream, Response
from kourier.client.retry import Retry
from kourier.client.timeouts import timed_out
from kourier.errors import (
    BrokerError,
    PublishError,
    ReplyTimeout,
    RequestTooLarge,
    SettingsError,
    StreamBroken,
)
from kourier.ops.metrics import ClientMetrics
from kourier.ops.tracing import inject
from kourier.protocol import Reply, ReplyAddress, Request
from kourier.registry import ServiceInfo
from kourier.settings import Settings
from kourier.transports.base import Transport

#: A call's ``retry``: a policy, ``None`` for the client's default, ``False`` for none.
RetryOption = Retry | Literal[False] | None

logger = logging.getLogger("kourier.client")

#: Request topics a client remembers by service name (a bound against unbounded names).
_TOPICS_KEPT = 1024


class Delivery:
    """A one-way message the producer has queued (``Client.enqueue``).

    ``await delivery`` returns the request id once the broker has acknowledged the
    message, or raises ``PublishError``; it may be awaited more than once.
    """

    __slots__ = ("_ack", "request_id")

    def __init__(self, request_id: str, ack: asyncio.Future[None]) -> None:
        self.request_id = request_id
        self._ack = ack

    def done(self) -> bool:
        """True once the broker acknowledged or refused the message."""
        return self._ack.done()

    def __await__(self) -> Generator[Any, None, str]:
        yield from self._ack.__await__()
        return self.request_id

    def __repr__(self) -> str:
        state = "settled" if self._ack.done() else "pending"
        return f"<Delivery {self.request_id} {state}>"


@dataclass(slots=True)
class ClientStats:
    """What a client's calls did since it was made (for metrics to read)."""

    #: Calls validated and handed to the broker: request, stream, gather and send.
    requests: int = 0
    #: Attempts after the first one of a call.
    retries: int = 0
    #: Calls that ended in ``ReplyTimeout`` waiting for their reply.
    timeouts: int = 0


class Client:
    """A caller instance: one broker connection and one reply inbox, shared by its calls.

    ``async with Client(settings) as client: await client.request("orders", "GET", "/")``.
    Without ``transport`` it connects to Kafka (through the client library that
    ``settings.kafka_client`` names) and owns that connection; a transport passed in is
    used as is and left to its owner to start and stop. ``retry`` is the default
    ``Retry`` policy of two-way calls (none: no retries); ``hooks`` maps ``"request"``
    and ``"response"`` to lists of callables.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        transport: Transport | None = None,
        retry: Retry | None = None,
        hooks: Mapping[str, Sequence[Hook]] | None = None,
        metrics: ClientMetrics | None = None,
    ):
        if retry is not None and not isinstance(retry, Retry):
            raise SettingsError(f"retry: must be a Retry or None, not {type(retry).__name__}")
        self.settings = settings if settings is not None else Settings.from_env()
        self.retry = retry
        self.hooks = CallerHooks(hooks)
        self.stats = ClientStats()
        self.metrics = metrics
        self._owns_transport = transport is None
        self.transport = transport if transport is not None else _kafka(self.settings)
        self.inbox = ReplyInbox(self.transport, self.settings)
        #: Which services exist and are live (the registry, read on first need).
        self.lookup = ServiceLookup(self.transport, self.settings)
        #: Cancels for calls that ended before their reply did (``client/cancel.py``).
        self.cancels = CancelSender(self.transport, self.settings)
        if metrics is not None:
            self.inbox.on_dropped = metrics.reply_dropped
        #: Request topics by service name, each name checked once (``_request_topic``).
        self._topics: dict[str, str] = {}
        #: Enqueued messages not yet acknowledged or refused, and the future ``flush``
        #: waits on until that count is 0: one callback per message, not one more per
        #: message for ``asyncio.wait`` in every flush.
        self._unsettled = 0
        self._drained: asyncio.Future[None] | None = None
        self._delivery_failures: list[BaseException] = []
        self._started = False

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("the client is already started")
        if self._owns_transport:
            await self.transport.start()
        try:
            await self.inbox.start()
        except BaseException:
            if self._owns_transport:
                await self.transport.stop()
            raise
        self._started = True

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            await self.lookup.stop()
            await self.cancels.stop()
            await self.inbox.stop()
        finally:
            if self._owns_transport:
                await self.transport.stop()

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __del__(self) -> None:
        if getattr(self, "_started", False):
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1)

    # -- calls -------------------------------------------------------------------------

    async def request(
        self,
        service: str,
        method: str,
        path: str,
        *,
        headers: Headers | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        params: Params | None = None,
        timeout: float | None = None,
        key: Key | None = None,
        request_id: str | None = None,
        retry: RetryOption = None,
        scheme: str = "http",
    ) -> Response:
        """Call ``service`` and wait for its whole response, until the deadline at most.

        ``timeout`` (default ``settings.default_timeout``) bounds the whole call, retries
        included; after it ``ReplyTimeout`` is raised and a late reply is dropped. ``key``
        keeps calls with the same key in order at the service. ``retry`` overrides the
        client's default policy (``False``: no retries). ``scheme`` (``https``) is the
        ASGI scheme the app sees, as if called at ``https://<service>``.
        """
        seconds = self._timeout(timeout)
        deadline = _loop_time() + seconds
        topic = self._topics.get(service) or self._request_topic(service)
        with self._call(service, method, path, topic) as call:
            request = await self._request(
                method,
                path,
                headers,
                content,
                json,
                params,
                key,
                request_id,
                seconds,
                two_way=True,
                scheme=scheme,
            )
            call.request_id(request.id)
            await self._reachable(service, topic, deadline)
            policy = self._policy(retry, request)
            with self.inbox.expect(request.id) as waiter, self.cancels.guard(service, request.id):
                try:
                    if policy is None:
                        items = await self._answer(topic, request, waiter, deadline)
                    else:
                        items = [await self._first_item(topic, request, waiter, policy, deadline)]
                        while not items[-1].end:
                            items.append(await waiter.next(deadline))
                except ReplyTimeout as exc:
                    self.stats.timeouts += 1
                    raise timed_out(exc, service, method, path, seconds) from None
            response = Response.from_items(items, method=request.method, url=_url(service, request))
            call.status(response.status_code)
        if self.hooks.has("response"):
            await self.hooks.emit("response", response)
        return response

    async def send(
        self,
        service: str,
        method: str,
        path: str,
        *,
        headers: Headers | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        params: Params | None = None,
        key: Key | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> str:
        """Send a one-way message; return its request id once the broker has it.

        Nothing comes back. With ``timeout`` the message carries a deadline after which
        the service skips it; without, it waits as long as it takes. One message at a
        time: to send many, ``enqueue`` them and await their deliveries.
        """
        topic = self._topics.get(service) or self._request_topic(service)
        with self._call(service, method, path, topic, one_way=True) as call:
            delivery = await self._enqueue(
                call, topic, method, path, headers, content, json, params, key, timeout, request_id
            )
            await delivery
        return delivery.request_id

    async def enqueue(
        self,
        service: str,
        method: str,
        path: str,
        *,
        headers: Headers | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        params: Params | None = None,
        key: Key | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Delivery:
        """Hand a one-way message to the producer; await the ``Delivery`` for the ack.

        Returns as soon as the record is queued (it waits only while the producer's
        buffer is full), so messages go out in batches: ``send`` waits a round trip per
        message, this does not. Messages with the same ``key`` keep their order.
        Awaiting the delivery gives the request id once the broker has the message, or
        raises ``PublishError``; ``flush`` waits for all of them and raises if any
        failed, so no failure goes unseen when the deliveries are not awaited one by one.
        """
        topic = self._topics.get(service) or self._request_topic(service)
        with self._call(service, method, path, topic, one_way=True) as call:
            return await self._enqueue(
                call, topic, method, path, headers, content, json, params, key, timeout, request_id
            )

    async def flush(self) -> None:
        """Wait until the broker has acknowledged or refused every enqueued message.

        Raises ``PublishError`` if any message enqueued since the last ``flush`` was
        refused or not acknowledged, whether or not its delivery was awaited.
        """
        while self._unsettled:
            drained = self._drained
            if drained is None or drained.done():
                drained = self._drained = asyncio.get_running_loop().create_future()
            # Shielded: a flush that is cancelled must not cancel another one's wait.
            await asyncio.shield(drained)
        failures, self._delivery_failures = self._delivery_failures, []
        if failures:
            first = failures[0]
            raise PublishError(
                f"{len(failures)} enqueued message(s) were not acknowledged; the first: {first}"
            ) from first

    @asynccontextmanager
    async def stream(
        self,
        service: str,
        method: str,
        path: str,
        *,
        headers: Headers | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        params: Params | None = None,
        timeout: float | None = None,
        key: Key | None = None,
        request_id: str | None = None,
        retry: RetryOption = None,
        scheme: str = "http",
    ) -> AsyncIterator[ReplyStream]:
        """Call ``service`` and read its reply item by item, as the items arrive.

        Entering waits for item 0 (status and headers) until the deadline; each later
        item must come within ``timeout`` of the previous one. Retries (``retry``, or the
        client's default) happen only while entering: once item 0 is in, the stream is
        the caller's and is never repeated.
        """
        reply = await self._open_stream(
            service,
            method,
            path,
            headers=headers,
            content=content,
            json=json,
            params=params,
            timeout=timeout,
            key=key,
            request_id=request_id,
            retry=retry,
            scheme=scheme,
        )
        try:
            with self.cancels.guard(service, reply.request_id, unfinished=reply.unfinished):
                if self.hooks.has("response"):
                    await self.hooks.emit("response", reply)
                yield reply
        finally:
            await reply.aclose()

    async def _open_stream(
        self,
        service: str,
        method: str,
        path: str,
        *,
        headers: Headers | None,
        content: bytes | str | None,
        json: Any,
        params: Params | None,
        timeout: float | None,
        key: Key | None,
        request_id: str | None,
        retry: RetryOption,
        scheme: str,
    ) -> ReplyStream:
        """``stream`` up to item 0: the stream, whose waiter its reader must close
        (``ReplyStream.aclose``) and whose unfinished end must send a cancel
        (``cancels.guard``); ``KourierTransport`` opens its calls here too."""
        seconds = self._timeout(timeout)
        deadline = _loop_time() + seconds
        topic = self._topics.get(service) or self._request_topic(service)
        # The call's span ends when item 0 arrives: a span left open across the yield
        # would stay current in the caller's code for as long as it reads the stream.
        with self._call(service, method, path, topic) as call:
            request = await self._request(
                method,
                path,
                headers,
                content,
                json,
                params,
                key,
                request_id,
                seconds,
                two_way=True,
                scheme=scheme,
            )
            call.request_id(request.id)
            await self._reachable(service, topic, deadline)
            policy = self._policy(retry, request)
            waiter = self.inbox.expect(request.id)
            try:
                with self._counting_timeouts(), self.cancels.guard(service, request.id):
                    if policy is None:
                        answer = await self._answer(topic, request, waiter, deadline, whole=False)
                        first = answer[0]
                    else:
                        first = await self._first_item(topic, request, waiter, policy, deadline)
            except ReplyTimeout as exc:
                waiter.close()
                raise timed_out(exc, service, method, path, seconds) from None
            except BaseException:
                waiter.close()
                raise
            call.status(first.status or 0)
        return ReplyStream(waiter, first, seconds, call=(service, method, path))

    async def gather(
        self,
        topic_or_service: str,
        method: str,
        path: str,
        *,
        headers: Headers | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        params: Params | None = None,
        count: int | None = None,
        timeout: float | None = None,
        key: Key | None = None,
        request_id: str | None = None,
    ) -> list[Response]:
        """Send one request that several services consume; collect their responses.

        ``topic_or_service`` is a topic name if it contains a dot (every topic kourier
        names does, no service name can), else a service whose request topic is used.
        Returns, in the order they completed, the responses of different responders once
        ``count`` have come, or at the deadline whatever has come by then (without
        ``count``, always at the deadline). ``ReplyTimeout`` only if none came at all.
        Responders are told apart by the ``kourier-from`` reply header.
        """
        if count is not None and count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        seconds = self._timeout(timeout)
        deadline = _loop_time() + seconds
        topic = _gather_topic(self.settings, topic_or_service)
        with self._call(topic_or_service, method, path, topic) as call:
            request = await self._request(
                method,
                path,
                headers,
                content,
                json,
                params,
                key,
                request_id,
                seconds,
                two_way=True,
            )
            call.request_id(request.id)
            await self._reachable(topic_or_service, topic, deadline)
            with self.inbox.expect(request.id, gather=True) as waiter:
                await self._publish(topic, request, deadline)
                replies = await waiter.gather(count, deadline)
            call.status(200 if replies else 0)
        url = f"kourier://{topic}{request.target}"
        responses = []
        for items in replies:
            try:
                responses.append(Response.from_items(items, method=request.method, url=url))
            except StreamBroken as exc:
                logger.warning("left out a broken reply: %s", exc)
        if not responses:
            self.stats.timeouts += 1
            raise timed_out(
                ReplyTimeout(f"no reply to {request.id} in time"),
                topic_or_service,
                method,
                path,
                seconds,
            )
        for response in responses:
            await self.hooks.emit("response", response)
        return responses

    # -- parts -------------------------------------------------------------------------

    def _request_topic(self, service: str) -> str:
        """The service's request topic, its name checked and the answer kept for the next call."""
        topic = self.settings.request_topic(service)
        if len(self._topics) >= _TOPICS_KEPT:
            self._topics.clear()
        self._topics[service] = topic
        return topic

    def _call(
        self, service: str, method: str, path: str, topic: str, *, one_way: bool = False
    ) -> AbstractContextManager[Call]:
        return observe(self.metrics, service, method, path, topic, one_way=one_way)

    def _timeout(self, timeout: float | None, *, inherit: bool = True) -> float:
        """The call's timeout; inside a handler, at most its time left (``inherit``)."""
        seconds = self.settings.default_timeout if timeout is None else timeout
        if seconds <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        return deadline.inherit(seconds) if inherit else seconds

    async def _request(
        self,
        method: str,
        path: str,
        headers: Headers | None,
        content: bytes | str | None,
        json: Any,
        params: Params | None,
        key: Key | None,
        request_id: str | None,
        timeout: float | None,
        *,
        two_way: bool,
        scheme: str = "http",
    ) -> Request:
        """Build a request, run the request hooks on it, validate it; nothing is sent if
        this raises."""
        if not self._started:
            raise RuntimeError("the client is not started (use 'async with Client(...)')")
        if key is not None and not isinstance(key, str | bytes):
            raise TypeError(f"key must be str or bytes, not {type(key).__name__}")
        request = Request(
            id=protocol.new_request_id() if request_id is None else request_id,
            method=method.upper(),
            target=target_of(path, params),
            body=body_of(content, json),
            # The current span (the call's) travels as W3C trace context headers.
            headers=inject(user_headers(headers, json_body=json is not None)),
            deadline_ms=None if timeout is None else protocol.now_ms() + int(timeout * 1000),
            reply_to=self.inbox.address if two_way else None,
            key=key.encode("utf-8") if isinstance(key, str) else key,
            scheme=scheme,
            parent_id=deadline.current_request_id(),
        )
        if request.parent_id is not None and logger.isEnabledFor(logging.DEBUG):
            # A line in the parent's context (its id) naming the nested call's id.
            logger.debug("nested call %s %s as request %s", method, path, request.id)
        hooked = self.hooks.has("request")
        if hooked:
            await self.hooks.emit("request", request)
        # An id this client drew is valid by construction, unless a hook replaced it.
        self._validate(request, check_id=hooked or request_id is not None)
        self.stats.requests += 1
        return request

    def _validate(self, request: Request, *, check_id: bool = True) -> None:
        """Check what the wire format and the broker demand (after the hooks had their say)."""
        check_method(request.method)
        if request.scheme not in protocol.SCHEMES:
            raise ValueError(f"scheme {request.scheme[:20]!r}: use http or https")
        if check_id and not protocol.is_valid_request_id(request.id):
            raise ValueError(f"request id {request.id[:40]!r}: use 1-128 of A-Z a-z 0-9 . _ : -")
        if request.key is not None and not isinstance(request.key, bytes):
            raise TypeError(f"key must be bytes, not {type(request.key).__name__}")
        if not isinstance(request.body, bytes):
            raise TypeError(f"body must be bytes, not {type(request.body).__name__}")
        request.headers = protocol.validate_user_headers(request.headers)
        if len(request.body) > self.settings.max_request_bytes:
            raise RequestTooLarge(
                f"request body of {len(request.body)} bytes is larger than max_request_bytes "
                f"({self.settings.max_request_bytes})"
            )

    def _policy(self, retry: RetryOption, request: Request) -> Retry | None:
        """The retry policy of this call, or None if it must be sent once only."""
        policy = self.retry if retry is None else retry
        if policy is False or policy is None:
            return None
        if not isinstance(policy, Retry):
            raise TypeError(f"retry must be a Retry, None or False, not {type(policy).__name__}")
        if not policy.allows(request):
            if policy.attempts > 1:
                logger.debug(
                    "request %s %s is not safe to repeat: no retries", request.id, request.method
                )
            return None
        return policy

    async def _first_item(
        self,
        topic: str,
        request: Request,
        waiter: ReplyWaiter,
        policy: Retry | None,
        deadline: float,
    ) -> Reply:
        """Publish ``request`` and return item 0 of its answer, repeating as ``policy`` says.

        One waiter serves every attempt (they share the request id), so a late answer to
        an earlier attempt completes the call whenever it comes.
        """
        attempts = 1 if policy is None else policy.attempts
        attempt = 1
        unanswered = False  # an earlier attempt got no reply: its answer may yet come
        while True:
            request.attempt = attempt
            try:
                await self._publish(topic, request, deadline)
            except BrokerError as exc:
                if not unanswered:
                    raise
                # The broker has an earlier attempt, which may still be answered: a
                # PublishError would tell the caller the call was not sent at all.
                logger.warning(
                    "attempt %d of request %s was not acknowledged (%s); still waiting",
                    attempt,
                    request.id,
                    exc,
                )
            if policy is None or attempt == attempts:
                return await waiter.next(deadline)
            first = await self._attempt(waiter, policy, attempt, deadline)
            if first is None:
                reason = "no reply in time"
                unanswered = True
            elif await self._should_repeat(first, policy, attempt, deadline):
                reason = f"status {first.status}"
                waiter.restart()
            else:
                return first
            attempt += 1
            self.stats.retries += 1
            logger.info(
                "retrying request %s (%s): attempt %d of %d", request.id, reason, attempt, attempts
            )

    async def _answer(
        self,
        topic: str,
        request: Request,
        waiter: ReplyWaiter,
        deadline: float,
        *,
        whole: bool = True,
    ) -> list[Reply]:
        """Publish once and read the whole reply (``whole``) or item 0, under one timer.

        The common case (no retries) of ``request`` and ``stream``; the same as
        ``_first_item`` with no policy (and reading on to the end), without a timer per
        wait.
        """
        key, value, headers = protocol.encode_request(request)
        acknowledged = False
        try:
            async with asyncio.timeout_at(deadline) as scope:
                await (await self.transport.publish(topic, value, key=key, headers=headers))
                acknowledged = True
                items = [await waiter.next()]
                while whole and not items[-1].end:
                    items.append(await waiter.next())
                return items
        except TimeoutError:
            if not scope.expired():
                raise
            if not acknowledged:
                raise ReplyTimeout(
                    f"the broker did not acknowledge request {request.id} before its deadline"
                ) from None
            raise ReplyTimeout(f"no reply to {request.id} in time") from None

    async def _attempt(
        self, waiter: ReplyWaiter, policy: Retry, attempt: int, deadline: float
    ) -> Reply | None:
        """Item 0 if it comes in attempt ``attempt``'s share of the time or the backoff after.

        None means: try again. At the deadline, the attempt's ``ReplyTimeout`` is raised.
        """
        now = _loop_time()
        until = deadline
        if policy.on_timeout:
            until = now + policy.share(deadline - now, policy.attempts - attempt + 1)
        try:
            return await waiter.next(until)
        except ReplyTimeout as timeout:
            # Back off, still listening: the answer to this attempt may yet come.
            resume = min(_loop_time() + policy.delay(attempt), deadline)
            late = await _next_before(waiter, resume)
            if late is None and _loop_time() >= deadline:
                raise timeout
            return late

    async def _should_repeat(
        self, first: Reply, policy: Retry, attempt: int, deadline: float
    ) -> bool:
        """Whether ``first`` is an answer worth trying again for; if so, back off first.

        Only a whole reply in one item is repeated: a streamed or split one may still
        be arriving, and its later items must not mix into the next attempt's. Nor is
        one repeated when the backoff would reach the deadline: the answer stands.
        """
        if first.status not in policy.statuses or not first.end:
            return False
        delay = policy.delay(attempt)
        if _loop_time() + delay >= deadline:
            return False
        await asyncio.sleep(delay)
        return True

    @contextmanager
    def _counting_timeouts(self) -> Iterator[None]:
        try:
            yield
        except ReplyTimeout:
            self.stats.timeouts += 1
            raise

    async def _publish(self, topic: str, request: Request, deadline: float) -> None:
        """Publish a two-way request and wait for the broker's ack, until the deadline."""
        key, value, headers = protocol.encode_request(request)
        try:
            async with asyncio.timeout_at(deadline):
                await (await self.transport.publish(topic, value, key=key, headers=headers))
        except TimeoutError:
            raise ReplyTimeout(
                f"the broker did not acknowledge request {request.id} before its deadline"
            ) from None

    async def _enqueue(
        self,
        call: Call,
        topic: str,
        method: str,
        path: str,
        headers: Headers | None,
        content: bytes | str | None,
        json: Any,
        params: Params | None,
        key: Key | None,
        timeout: float | None,
        request_id: str | None,
    ) -> Delivery:
        """Build a one-way request and queue it: its delivery, tracked until settled."""
        if timeout is not None:
            # One-way work is not bounded by the handler that sends it: it runs later.
            timeout = self._timeout(timeout, inherit=False)
        request = await self._request(
            method, path, headers, content, json, params, key, request_id, timeout, two_way=False
        )
        call.request_id(request.id)
        if not self.lookup.knows(topic):
            await self.lookup.require_topic(topic)
        record_key, value, record_headers = protocol.encode_request(request)
        published = await self.transport.publish(
            topic, value, key=record_key, headers=record_headers
        )
        ack = (
            published if isinstance(published, asyncio.Future) else asyncio.ensure_future(published)
        )
        self._unsettled += 1
        ack.add_done_callback(self._settled)
        return Delivery(request.id, ack)

    def _settled(self, ack: asyncio.Future[None]) -> None:
        self._unsettled -= 1
        if not ack.cancelled() and (error := ack.exception()) is not None:
            self._delivery_failures.append(error)
        if not self._unsettled and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def _reachable(self, service: str, topic: str, deadline: float) -> None:
        """Fail fast, as HTTP would: the service must exist and (for a service, not a
        shared topic) have a live instance. See ``client/lookup.py``."""
        if self.lookup.reachable(service, topic):
            return
        await self.lookup.require_topic(topic)
        if "." not in service:
            await self.lookup.require_live(service, deadline)

    async def services(self) -> dict[str, ServiceInfo]:
        """The services in the registry, by name, with their instances (live or not)."""
        if not self._started:
            raise RuntimeError("the client is not started (use 'async with Client(...)')")
        return await self.lookup.directory.services()

    @property
    def reply_address(self) -> ReplyAddress:
        return self.inbox.address

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return f"<Client {state} {type(self.transport).__name__}>"


def _kafka(settings: Settings) -> Transport:
    # Imported here so that a caller on the in-memory transport never loads a Kafka client.
    from kourier.transports import kafka_transport

    return kafka_transport(settings)


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


async def _next_before(waiter: ReplyWaiter, deadline: float) -> Reply | None:
    """The next reply item if it comes before ``deadline``, else None."""
    try:
        return await waiter.next(deadline)
    except ReplyTimeout:
        return None


def _url(service: str, request: Request) -> str:
    return f"{request.scheme}://{service}{request.target}"


def _gather_topic(settings: Settings, topic_or_service: str) -> str:
    if "." in topic_or_service:
        return topic_or_service
    return settings.request_topic(topic_or_service)
