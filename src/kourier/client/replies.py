"""This caller instance's reply destination: one partition, a map request id -> waiter.

A ``ReplyInbox`` reads one partition of the shared reply topic (chosen at random, so
caller instances spread over the partitions) from its end, and hands each reply record
to the waiter registered for its request id. Several callers may read the same
partition: each keeps only the ids it is waiting for and drops the rest.

It must never die on bad input: a malformed record, one the Kafka client could not
read (``Record.undecodable``), a reply nobody waits for (another caller's, or one that
came after its deadline) and a broker hiccup are logged and skipped, and the bad records
counted (``dropped``). If its task ends all the same (a bug), it is never a zombie: the
error is logged, every waiting call fails with it, and so does every new call.
Waiters are forgotten as soon as their call is over, so the map only holds calls in
flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable
from itertools import count
from types import TracebackType

from kourier._aio import cancel_and_wait
from kourier.errors import BrokerError, KourierError, ProtocolError, ReplyTimeout, StreamBroken
from kourier.protocol import Reply, ReplyAddress, decode_reply
from kourier.settings import Settings
from kourier.transports.base import PartitionReader, Record, TopicSpec, Transport

logger = logging.getLogger("kourier.client")

_FETCH_TIMEOUT = 1.0
_MAX_BACKOFF = 2.0


class ReplyOrder:
    """One responder's reply items, put back in ``seq`` order.

    Out-of-order items wait in a buffer; an item whose seq was already taken or
    buffered (a redelivered request answered twice) is ignored. Once the end marker has
    arrived and the next item is still missing, the reply is broken: every record of
    one request id travels on one partition, read in order, so an item stored before
    its end marker has been seen by then. (The inbox routes a whole fetched batch before
    any reader looks, so items swapped within one batch are still put right.)
    """

    __slots__ = ("_buffer", "end_seq", "next_seq")

    def __init__(self) -> None:
        self.next_seq = 0
        self.end_seq: int | None = None
        self._buffer: dict[int, Reply] = {}

    def add(self, reply: Reply) -> bool:
        """Keep ``reply``; False if it is a duplicate or lies beyond the end marker."""
        if reply.seq < self.next_seq or reply.seq in self._buffer:
            return False
        if self.end_seq is not None and reply.seq > self.end_seq:
            return False
        if reply.end:
            self.end_seq = reply.seq
            for seq in [s for s in self._buffer if s > reply.seq]:
                del self._buffer[seq]
        self._buffer[reply.seq] = reply
        return True

    def pop(self) -> Reply | None:
        """The next item in order, if it has arrived."""
        reply = self._buffer.pop(self.next_seq, None)
        if reply is not None:
            self.next_seq += 1
        return reply

    def put_back(self, reply: Reply) -> None:
        """Undo the ``pop`` that took ``reply``: nobody received it after all."""
        self.next_seq = reply.seq
        self._buffer[reply.seq] = reply

    @property
    def done(self) -> bool:
        return self.end_seq is not None and self.next_seq > self.end_seq

    @property
    def broken(self) -> bool:
        return self.end_seq is not None and not self.done and self.next_seq not in self._buffer


class ReplyWaiter:
    """The handle of one call in flight: receives its reply items until closed.

    In single mode (``request``, ``stream``) the first responder heard from is the one
    followed; items from any other are dropped. In gather mode each responder (the
    ``kourier-from`` header) has its own order; a reply without that header counts as
    a responder of its own when it is a complete single item.

    Delivery is pushed: while the call waits in ``next``, the inbox's reader hands the
    next item in order straight to the future the call awaits (one wake-up, no event to
    re-check and nothing to fetch after it); items that come while nobody waits stay in
    the order's buffer for the next ``next``.
    """

    def __init__(self, inbox: ReplyInbox, request_id: str, *, gather: bool) -> None:
        self.request_id = request_id
        self._inbox = inbox
        self._gather = gather
        self._orders: dict[str | None, ReplyOrder] = {}
        self._anonymous = count()
        #: What the call awaits while it waits: the next item in order (single mode),
        #: or None for "look again" (gather mode, a failure, a broken reply).
        self._waiting: asyncio.Future[Reply | None] | None = None
        self._failure: KourierError | None = None
        self.closed = False

    def deliver(self, reply: Reply) -> None:
        responder = reply.responder
        if self._gather and responder is None and reply.seq == 0 and reply.end:
            responder = f"#{next(self._anonymous)}"
        orders = self._orders
        if not self._gather and orders and responder not in orders:
            logger.debug("dropped a reply to %s from a second responder", self.request_id)
            return
        order = orders.get(responder)
        if order is None:
            order = orders[responder] = ReplyOrder()
        if not order.add(reply):
            logger.debug("dropped duplicate reply item %s of %s", reply.seq, self.request_id)
            return
        waiting = self._waiting
        if waiting is None or waiting.done():
            return
        if self._gather:
            waiting.set_result(None)
        elif (item := order.pop()) is not None:
            waiting.set_result(item)
        elif order.broken:
            waiting.set_result(None)  # ``next`` raises StreamBroken when it looks again

    def restart(self) -> None:
        """Forget the items taken so far: a retry's reply starts again at seq 0.

        The waiter stays registered, so nothing addressed to this request id is lost
        between attempts.
        """
        self._orders.clear()

    def fail(self, error: KourierError) -> None:
        self._failure = error
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    async def next(self, deadline: float | None = None) -> Reply:
        """The next reply item in order; ``ReplyTimeout`` if none before ``deadline``.

        ``deadline`` is on the event loop's clock (``loop.time()``); None waits without
        a timer of its own, for a caller that bounds the whole call itself.
        """
        while True:
            if self._failure is not None:
                raise self._failure
            order = next(iter(self._orders.values()), None)
            if order is not None:
                reply = order.pop()
                if reply is not None:
                    return reply
                if order.broken:
                    raise StreamBroken(
                        f"reply to {self.request_id} ended at item {order.end_seq} "
                        f"but item {order.next_seq} never came"
                    )
            pushed = await self._wait(deadline)
            if pushed is not None:
                return pushed

    async def gather(self, limit: int | None, deadline: float) -> list[list[Reply]]:
        """Complete replies of different responders, until ``limit`` of them or the deadline.

        Replies still incomplete at the deadline, and broken ones, are left out.
        """
        taken: dict[str | None, list[Reply]] = {}
        finished: set[str | None] = set()
        complete: list[list[Reply]] = []
        while True:
            if self._failure is not None:
                raise self._failure
            for responder, order in self._orders.items():
                if responder in finished:
                    continue
                items = taken.setdefault(responder, [])
                while (reply := order.pop()) is not None:
                    items.append(reply)
                if order.done:
                    finished.add(responder)
                    complete.append(items)
                elif order.broken:
                    finished.add(responder)
                    logger.warning("reply to %s from %s is broken", self.request_id, responder)
            if limit is not None and len(complete) >= limit:
                return complete[:limit]
            try:
                await self._wait(deadline)
            except ReplyTimeout:
                return complete

    async def _wait(self, deadline: float | None) -> Reply | None:
        """Wait for the reader's next hand-over: an item (single mode) or None (look again).

        The deadline is a timer that fails the awaited future, not a timeout scope around
        the await: a cancellation of the call still reaches it as CancelledError.
        """
        loop = asyncio.get_running_loop()
        waiting: asyncio.Future[Reply | None] = loop.create_future()
        self._waiting = waiting
        timer = None if deadline is None else loop.call_at(deadline, self._expire, waiting)
        try:
            return await waiting
        except BaseException:
            # Cancelled after the reader had already handed an item over: keep it for
            # the next ``next``, or it would be lost without a trace.
            if waiting.done() and not waiting.cancelled() and waiting.exception() is None:
                item = waiting.result()
                order = None if item is None else self._orders.get(item.responder)
                if item is not None and order is not None:
                    order.put_back(item)
            raise
        finally:
            self._waiting = None
            if timer is not None:
                timer.cancel()

    def _expire(self, waiting: asyncio.Future[Reply | None]) -> None:
        if not waiting.done():
            waiting.set_exception(ReplyTimeout(f"no reply to {self.request_id} in time"))

    def close(self) -> None:
        """Forget the request id: replies that still come are dropped."""
        if not self.closed:
            self.closed = True
            self._inbox.forget(self)

    def __enter__(self) -> ReplyWaiter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ReplyInbox:
    """Reads this caller's reply partition and routes each reply to its waiter."""

    def __init__(
        self, transport: Transport, settings: Settings, *, partition: int | None = None
    ) -> None:
        self._transport = transport
        self._settings = settings
        self._partition = partition
        self._waiters: dict[str, ReplyWaiter] = {}
        self._reader: PartitionReader | None = None
        self._task: asyncio.Task[None] | None = None
        self._address: ReplyAddress | None = None
        #: Records stepped over, by why: "malformed" or "undecodable".
        self.dropped: Counter[str] = Counter()
        #: Called with the why of each record stepped over (the client's metrics).
        self.on_dropped: Callable[[str], None] | None = None
        #: The error the reading task died of, if it did.
        self.failure: BaseException | None = None

    @property
    def address(self) -> ReplyAddress:
        """Where services send this caller's replies (the ``kourier-reply-to`` header)."""
        if self._address is None:
            raise RuntimeError("the reply inbox is not started")
        return self._address

    @property
    def waiting(self) -> int:
        """How many calls are waiting for replies."""
        return len(self._waiters)

    async def start(self) -> None:
        topic = self._settings.reply_topic
        if self._settings.create_topics:
            spec = TopicSpec(
                topic, self._settings.reply_partitions, self._settings.replication_factor
            )
            await self._transport.ensure_topics([spec])
        # The topic may predate these settings: pick among the partitions it really has.
        partitions = await self._transport.partition_count(topic)
        partition = self._partition
        if partition is None:
            partition = random.randrange(partitions)
        reader = self._transport.partition_reader(topic, partition)
        await reader.start()
        self._reader = reader
        self._address = ReplyAddress(topic, partition)
        self._task = asyncio.create_task(self._run(reader), name=f"kourier replies {topic}")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.failure = task.exception()
        logger.error(
            "the reply inbox stopped reading %s: every call of this client fails now",
            self._address,
            exc_info=self.failure,
        )
        error = BrokerError(f"the reply inbox stopped: {self.failure!r}")
        for waiter in list(self._waiters.values()):
            waiter.fail(error)

    async def stop(self) -> None:
        task, self._task = self._task, None
        try:
            await cancel_and_wait(task)
        except Exception as error:
            if error is not self.failure:  # already logged and given to every call
                raise
        for waiter in list(self._waiters.values()):
            waiter.fail(BrokerError("the client stopped before the reply came"))
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None

    def expect(self, request_id: str, *, gather: bool = False) -> ReplyWaiter:
        """Register a waiter for ``request_id``; close it when the call is over."""
        if self._task is None:
            raise RuntimeError("the reply inbox is not started")
        if self.failure is not None:
            raise BrokerError(f"the reply inbox stopped: {self.failure!r}")
        if request_id in self._waiters:
            raise ValueError(f"request id {request_id!r} is already waiting for a reply")
        waiter = ReplyWaiter(self, request_id, gather=gather)
        self._waiters[request_id] = waiter
        return waiter

    def forget(self, waiter: ReplyWaiter) -> None:
        if self._waiters.get(waiter.request_id) is waiter:
            del self._waiters[waiter.request_id]

    async def _run(self, reader: PartitionReader) -> None:
        backoff = 0.1
        while True:
            try:
                records = await reader.fetch(_FETCH_TIMEOUT)
            except BrokerError as exc:
                # Only the broker's errors pass: anything else (a reader that can never
                # fetch again) ends the task, and ``_ended`` fails the calls.
                logger.error("could not fetch replies; retrying in %.1fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            backoff = 0.1
            for record in records:
                self.route(record)

    def route(self, record: Record) -> None:
        """Hand one reply record to its waiter; log, count and drop anything else."""
        if record.undecodable is not None:
            self._drop(record, "undecodable", record.undecodable)
            return
        try:
            reply = decode_reply(record.value, record.headers)
        except ProtocolError as exc:
            self._drop(record, "malformed", str(exc))
            return
        except Exception as exc:
            logger.exception("unexpected error decoding %s", record.where)
            self._drop(record, "malformed", repr(exc))
            return
        waiter = self._waiters.get(reply.request_id)
        if waiter is None:
            logger.debug("dropped reply %s: no call waits for %s", record.where, reply.request_id)
            return
        waiter.deliver(reply)

    def _drop(self, record: Record, why: str, reason: str) -> None:
        self.dropped[why] += 1
        logger.warning("dropped %s reply record at %s: %s", why, record.where, reason)
        if self.on_dropped is not None:
            self.on_dropped(why)
