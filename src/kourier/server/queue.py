"""Queue mode: serve requests from a Kafka share group, each record acknowledged on its own.

The rules this module keeps (docs/reliability.md lists the tests behind them):
- at most ``concurrency`` handlers run at once; records fetched beyond that wait for a
  slot, and one that cannot start before its lock bound is released untouched;
- a record is accepted once its handling is over (for a two-way request, after the
  broker acknowledged its reply); rejected once it was dead-lettered (the handler's last
  attempt failed, or the record is malformed); the broker's acknowledgement is awaited;
- a record delivered for the group's last time (its delivery count is the delivery
  limit) is not run: its earlier deliveries were never acknowledged, which is what a
  handler that kills its process looks like. It is dead-lettered, then rejected, so the
  crash loop ends and the record is kept;
- a redelivered record (delivery count above 1) may be one that killed the process it
  ran in, so it never runs beside others of its member's batch: first-time records of
  the batch run (concurrently) and settle first, then the redelivered ones one by one,
  each settled before the next starts, in ``suspects_in_turn`` order;
- no handler runs past its lock bound (the lock duration less ``lock_margin``, counted
  from the fetch): the broker cannot renew a lock through this client, and a record
  whose lock ran out goes to another member while this one still runs it. Past the
  bound the handler is cancelled and the record dead-lettered and rejected;
- on stop, records not started are released at once (other members take them), running
  handlers get up to ``drain_timeout`` (never past their bound), and what they have not
  finished by then is released for redelivery.

Each of ``members`` share-group members fetches its own batch and, as Kafka's explicit
acknowledgement mode demands, fetches again only when all of that batch is settled: a
slow record holds back its own member's next fetch, never the others', and never the
acknowledgement of a record that is done.

It must never let a handler's exception escape into a fetch loop, and never settle a
record without saying so in a log line and a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from kourier import protocol
from kourier._aio import DeathWatch, cancel_and_wait
from kourier.errors import BrokerError, SettingsError
from kourier.transports.base import (
    Acknowledgement,
    Delivery,
    Record,
    ShareConsumer,
    TopicPartition,
    Transport,
)

logger = logging.getLogger("kourier.server")

Handler = Callable[[Record], Coroutine[Any, Any, None]]
DeadLetter = Callable[[Record, str, int], Awaitable[None]]

#: Share-group members per service instance (each one Kafka client with its own
#: connection and thread): how many slow records it takes to stop an instance fetching.
MEMBERS = 4
#: Seconds a stop waits for the releases of handlers it cancelled to reach the broker.
STOP_ACK_WAIT = 5.0

_dead_lettered: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "kourier_queue_dead_lettered", default=None
)


def note_dead_lettered() -> None:
    """Called by the service when it dead-letters the record being handled: in queue
    mode that record is then rejected rather than accepted. Outside queue mode, nothing."""
    mark = _dead_lettered.get()
    if mark is not None:
        mark.append(True)


@dataclass
class QueueStats:
    """What the queue consumer did with the records it acquired."""

    acquired: int = 0
    accepted: int = 0
    released: int = 0
    rejected: int = 0
    #: Acknowledgements the broker refused (the lock had run out): the record was or
    #: will be handed out again.
    ack_failures: int = 0
    #: Handlers cancelled at their lock bound.
    overran: int = 0
    #: How many records arrived with each delivery count.
    delivery_counts: Counter[int] = field(default_factory=Counter)


class QueueConsumer:
    """The queue-mode consume loop of one service instance (see the module docstring)."""

    def __init__(
        self,
        transport: Transport,
        topics: Sequence[str],
        group: str,
        handler: Handler,
        dead_letter: DeadLetter,
        *,
        concurrency: int,
        drain_timeout: float,
        members: int = MEMBERS,
    ) -> None:
        self._handler = handler
        self._dead_letter = dead_letter
        self._concurrency = concurrency
        self._drain_timeout = drain_timeout
        self._transport = transport
        self._topics = tuple(topics)
        self._group = group
        self._member_count = max(1, min(members, concurrency))
        self._members: list[ShareConsumer] = []
        self._slots = asyncio.Semaphore(concurrency)
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._waiting: set[asyncio.Task[None]] = set()
        self._running: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        #: Per member, redelivered records waiting to run one at a time.
        self._queued: dict[ShareConsumer, deque[Delivery]] = {}
        self._started_members: list[ShareConsumer] = []
        self.stats = QueueStats()
        #: Monotonic time of the last fetch that returned, for liveness checks.
        self.last_progress = time.monotonic()
        #: True once every member has joined the share group, until stop.
        self.joined = False
        self._held = 0
        #: Records settled (accepted, released or rejected), as the ordered loop counts.
        self.completed = 0
        #: Always empty: every member of a share group reads every partition, and the
        #: broker, not the member, decides which records it gets.
        self.assigned: set[TopicPartition] = set()
        #: The error a member's fetch loop died of; ``failed`` is set when it is (health
        #: turns red, ``serve`` stops the process), as in the ordered loop.
        self._watch = DeathWatch(self._stopping)

    @property
    def failure(self) -> BaseException | None:
        """The error a loop of this consumer died of, or None."""
        return self._watch.failure

    @property
    def failed(self) -> asyncio.Event:
        """Set at once when a loop of this consumer dies."""
        return self._watch.failed

    @property
    def in_flight(self) -> int:
        """Records acquired and not yet settled (running or waiting for a slot)."""
        return self._held

    async def lag(self) -> dict[TopicPartition, int]:
        """Nothing per partition: a share group's backlog is the group's, not a member's."""
        return {}

    async def start(self) -> None:
        batch = max(1, self._concurrency // self._member_count)
        try:
            self._members = [
                self._transport.share_consumer(self._topics, self._group, max_records=batch)
                for _ in range(self._member_count)
            ]
        except BrokerError as exc:
            raise SettingsError(
                f"consumption: 'queue' needs Kafka share groups, which "
                f"{type(self._transport).__name__} cannot use ({exc}; aiokafka has no share "
                "consumer): set KOURIER_KAFKA_CLIENT=confluent, or serve in 'ordered' mode"
            ) from exc
        # All at once: each member that joins changes the group's assignment, and a member
        # that loses a partition gives back what it had acquired there (its delivery count
        # already raised); joining one by one was seen to raise a record's count by two.
        results = await asyncio.gather(
            *(member.start() for member in self._members), return_exceptions=True
        )
        self._started_members = [
            m for m, r in zip(self._members, results, strict=True) if r is None
        ]
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await self._stop_members()
            raise failure
        self.joined = True
        self._loops = [
            asyncio.create_task(self._fetch_loop(m), name=f"kourier-queue-fetch-{i}")
            for i, m in enumerate(self._members)
        ]
        for task in self._loops:
            self._watch.watch(task)
        first = self._members[0]
        logger.info(
            "queue mode: %d share-group members, lock %.1f s (handlers bounded to %.1f s), "
            "delivery limit %d",
            len(self._members),
            first.lock_seconds,
            self._bound_seconds(first),
            first.delivery_limit,
        )

    async def stop(self) -> None:
        """Stop fetching, release what has not started, drain what runs, leave the group."""
        self._stopping.set()
        try:
            await cancel_and_wait(*self._loops)
        except Exception as error:
            # Already logged and kept in ``failure``; stopping still releases and drains.
            if error is not self.failure:
                raise
        await self._release_queued()
        # Records waiting for a slot see the stop at once and are released.
        settling = self._waiting | self._running
        if settling:
            _, late = await asyncio.wait(settling, timeout=self._drain_timeout)
            if late:
                logger.warning(
                    "%d handlers still running after the drain timeout; their records are "
                    "released for redelivery",
                    len(late),
                )
                await cancel_and_wait(*self._handlers)
                await asyncio.wait(late, timeout=STOP_ACK_WAIT)
        await self._stop_members()
        self.joined = False

    async def _stop_members(self) -> None:
        for member in self._started_members:
            try:
                await member.stop()
            except BrokerError as exc:
                logger.warning("share-group member did not leave cleanly: %s", exc)
        self._started_members.clear()

    # -- fetching ----------------------------------------------------------------------

    @staticmethod
    def _bound_seconds(member: ShareConsumer) -> float:
        """How long a record may be held from its fetch: the lock less a margin for the
        dead-letter copy and the acknowledgement to reach the broker in time."""
        return member.lock_seconds - lock_margin(member.lock_seconds)

    async def _fetch_loop(self, member: ShareConsumer) -> None:
        while not self._stopping.is_set():
            try:
                deliveries = await member.fetch(timeout=0.5)
            except BrokerError as exc:
                logger.warning("fetch failed, retrying: %s", exc)
                await asyncio.sleep(0.5)
                continue
            self.last_progress = time.monotonic()
            if not deliveries:
                continue
            until = time.monotonic() + self._bound_seconds(member)
            self._held += len(deliveries)
            self.stats.acquired += len(deliveries)
            self.stats.delivery_counts.update(d.count for d in deliveries)
            # Kafka fetches again only when this whole batch is acknowledged.
            await self._run_together(member, [d for d in deliveries if d.count == 1], until)
            again = suspects_in_turn([d for d in deliveries if d.count > 1])
            for delivery in again:
                logger.warning(
                    "request %s at %s delivered for the %s time (a member before may have "
                    "died with it): it runs alone",
                    _request_id(delivery.record),
                    delivery.record.where,
                    _ordinal(delivery.count),
                )
            self._queued.setdefault(member, deque()).extend(again)
            queued = self._queued[member]
            while queued and not self._stopping.is_set():
                await self._run_together(member, [queued.popleft()], until)

    async def _run_together(
        self, member: ShareConsumer, deliveries: list[Delivery], until: float
    ) -> None:
        if deliveries:
            # Tasks of their own: a stop cancels this loop, never a record's handling.
            await asyncio.wait(
                [
                    asyncio.create_task(self._settle(member, d, until), name="kourier-queue")
                    for d in deliveries
                ]
            )

    async def _release_queued(self) -> None:
        """On stop: give back the redelivered records still waiting for their turn."""
        for member, queued in self._queued.items():
            while queued:
                self._held -= 1
                await self._acknowledge(member, queued.popleft(), Acknowledgement.RELEASE)

    async def _settle(self, member: ShareConsumer, delivery: Delivery, until: float) -> None:
        """Run one record (once a slot is free) and acknowledge it as its outcome says."""
        task = asyncio.current_task()
        assert task is not None
        try:
            how = await self._outcome(member, delivery, until, task)
        except Exception:
            # The service's handler catches what the app raises; this is kourier's own
            # failure, so the record goes back rather than being lost.
            logger.exception("handling the record at %s failed", delivery.record.where)
            how = Acknowledgement.RELEASE
        finally:
            self._held -= 1
            self.completed += 1
        await self._acknowledge(member, delivery, how)

    async def _outcome(
        self, member: ShareConsumer, delivery: Delivery, until: float, task: asyncio.Task[None]
    ) -> Acknowledgement:
        record = delivery.record
        self._waiting.add(task)
        try:
            if not await self._slot_until(until):
                logger.warning(
                    "request %s at %s could not start before its lock bound (no free slot, or "
                    "its turn came too late): released untouched for another member",
                    _request_id(record),
                    record.where,
                )
                return Acknowledgement.RELEASE
        finally:
            self._waiting.discard(task)
        self._running.add(task)
        try:
            if delivery.count >= member.delivery_limit:
                await self._dead_letter(
                    record,
                    f"delivered {delivery.count} times (the share group's delivery limit) "
                    "without being acknowledged: its handler may kill or hang its process, "
                    "so it is not run again",
                    delivery.count - 1,
                )
                return Acknowledgement.REJECT
            return await self._run(record, until)
        finally:
            self._running.discard(task)
            self._slots.release()

    async def _slot_until(self, until: float) -> bool:
        """Take a slot; False (and no slot) if the consumer stops or ``until`` passes first
        (a slot that frees at ``until`` itself is given back: no time is left to run)."""
        if self._stopping.is_set():
            return False
        acquire = asyncio.ensure_future(self._slots.acquire())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait(
                {acquire, stop},
                timeout=max(0.0, until - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stop.cancel()
            if not acquire.done():
                acquire.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await acquire
        stopped_or_late = self._stopping.is_set() or time.monotonic() >= until
        if acquire.done() and not acquire.cancelled() and stopped_or_late:
            self._slots.release()
            return False
        return acquire.done() and not acquire.cancelled()

    async def _run(self, record: Record, until: float) -> Acknowledgement:
        mark: list[bool] = []
        context = contextvars.copy_context()
        context.run(_dead_lettered.set, mark)
        handling = asyncio.create_task(self._handler(record), context=context)
        self._handlers.add(handling)
        try:
            done, _ = await asyncio.wait({handling}, timeout=max(0.0, until - time.monotonic()))
        finally:
            self._handlers.discard(handling)
        if not done:
            await cancel_and_wait(handling)
            self.stats.overran += 1
            await self._dead_letter(
                record,
                "handler ran past the queue-mode bound (the share group's record lock less "
                "a margin): cancelled, not run again, since its lock cannot be renewed",
                1,
            )
            return Acknowledgement.REJECT
        if handling.cancelled():  # the drain timeout of a stop
            return Acknowledgement.RELEASE
        handling.result()
        return Acknowledgement.REJECT if mark else Acknowledgement.ACCEPT

    async def _acknowledge(
        self, member: ShareConsumer, delivery: Delivery, how: Acknowledgement
    ) -> None:
        record = delivery.record
        try:
            await member.acknowledge(delivery, how)
        except BrokerError as exc:
            self.stats.ack_failures += 1
            logger.error(
                "the broker refused to %s request %s at %s (it will be handed out again): %s",
                how.value,
                _request_id(record),
                record.where,
                exc,
            )
            return
        if how is Acknowledgement.ACCEPT:
            self.stats.accepted += 1
        elif how is Acknowledgement.RELEASE:
            self.stats.released += 1
        else:
            self.stats.rejected += 1


def suspects_in_turn(deliveries: list[Delivery]) -> list[Delivery]:
    """Redelivered records in the order to run them one by one: by offset, downwards on
    odd delivery counts. Records acquired together with one that kills its process come
    back together with it; one direction on one delivery and the other on the next runs
    each of them before the killer at least once in two deliveries."""
    if not deliveries:
        return []
    downwards = max(d.count for d in deliveries) % 2 == 1
    return sorted(
        deliveries,
        key=lambda d: (d.record.topic, d.record.partition, d.record.offset),
        reverse=downwards,
    )


def lock_margin(lock_seconds: float) -> float:
    """Time kept back from a record's lock for settling it: a fifth, at most 5 s."""
    return min(5.0, lock_seconds / 5)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _request_id(record: Record) -> str:
    return protocol.request_id_of(record.headers) or "(no request id)"
