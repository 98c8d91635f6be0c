"""Tell a service to stop the handler of a call its caller no longer waits for.

When a two-way call ends before its reply did (the waiting task is cancelled, a stream
is closed early, the call's timeout fires), the ``Client`` publishes a cancel record to
the service's cancels topic (docs/protocol.md, "Deadlines and cancels"). That is best
effort: it runs in a task of its own, so the caller never waits for it, and a failure
is logged at debug and counted, never raised into the caller's code. ``Client.stop``
gives the tasks still running a moment to finish, so a process that exits right after
(the CLI on Ctrl-C) still sends its cancel.

A caller never creates a service's topics: a cancel goes out only if the cancels topic
exists (an older service has none). The answer is cached per topic, a missing topic
for ``MISSING_TTL`` seconds, so a service deployed later is found.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import TracebackType

from kourier import protocol
from kourier.errors import KourierError, ReplyTimeout
from kourier.settings import Settings
from kourier.transports.base import Transport

logger = logging.getLogger("kourier.client")

#: Seconds a cancels topic found missing is not looked for again.
MISSING_TTL = 30.0
#: Seconds ``stop`` waits for cancels still being sent.
STOP_WAIT = 2.0

#: Why a caller stopped waiting (the ``kourier-reason`` header).
CANCELLED = "cancelled"
CLOSED = "closed"
TIMEOUT = "timeout"


class CancelSender:
    """Publishes this client's cancels, one task each, and counts what became of them."""

    def __init__(self, transport: Transport, settings: Settings) -> None:
        self._transport = transport
        self._settings = settings
        self._found: set[str] = set()
        self._missing: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Cancels the broker acknowledged; cancels not sent (no cancels topic, or the
        #: broker did not take them).
        self.sent = 0
        self.not_sent = 0

    def send(self, service: str, request_id: str, reason: str) -> None:
        """Publish a cancel for ``request_id`` to ``service`` in the background."""
        try:
            topic = self._settings.cancel_topic(service)
        except KourierError:  # a topic name (scatter-gather), not a service: no cancels
            return
        task = asyncio.get_running_loop().create_task(
            self._send(topic, protocol.Cancel(request_id, reason)),
            name=f"kourier cancel {request_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def guard(
        self, service: str, request_id: str, *, unfinished: Callable[[], bool] | None = None
    ) -> CancelGuard:
        """Send a cancel if the block ends by the call's timeout or cancellation; with
        ``unfinished``, also on any other exit while it says the reply has not ended."""
        return CancelGuard(self, service, request_id, unfinished)

    async def stop(self) -> None:
        """Give the cancels still being sent up to ``STOP_WAIT`` seconds, then drop them."""
        tasks = list(self._tasks)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=STOP_WAIT)
        for task in late:
            task.cancel()
        if late:
            self.not_sent += len(late)
            logger.debug("%d cancels not sent: the client stopped", len(late))

    async def _send(self, topic: str, cancel: protocol.Cancel) -> None:
        try:
            if not await self._exists(topic):
                self.not_sent += 1
                logger.debug(
                    "cancel of request %s not sent: no topic %r (the service predates cancels)",
                    cancel.request_id,
                    topic,
                )
                return
            key, value, headers = protocol.encode_cancel(cancel)
            await (await self._transport.publish(topic, value, key=key, headers=headers))
        except Exception as exc:  # best effort: nothing may reach the caller from here
            self.not_sent += 1
            logger.debug("cancel of request %s not sent: %s", cancel.request_id, exc)
            return
        self.sent += 1
        logger.debug("sent a cancel for request %s (%s)", cancel.request_id, cancel.reason)

    async def _exists(self, topic: str) -> bool:
        if topic in self._found:
            return True
        missing_since = self._missing.get(topic)
        if missing_since is not None and time.monotonic() - missing_since < MISSING_TTL:
            return False
        if topic in await self._transport.describe_topics([topic]):
            self._found.add(topic)
            self._missing.pop(topic, None)
            return True
        self._missing[topic] = time.monotonic()
        return False


class CancelGuard:
    """``CancelSender.guard``'s block: a class, not a generator, as every call enters one."""

    __slots__ = ("_request_id", "_sender", "_service", "_unfinished")

    def __init__(
        self,
        sender: CancelSender,
        service: str,
        request_id: str,
        unfinished: Callable[[], bool] | None,
    ) -> None:
        self._sender = sender
        self._service = service
        self._request_id = request_id
        self._unfinished = unfinished

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        reason = CLOSED
        if exc_type is not None and issubclass(exc_type, ReplyTimeout):
            reason = TIMEOUT
        elif exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            reason = CANCELLED
        if self._unfinished is None:
            if reason is not CLOSED:
                self._sender.send(self._service, self._request_id, reason)
        elif self._unfinished():
            self._sender.send(self._service, self._request_id, reason)
