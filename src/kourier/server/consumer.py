"""Fetch requests, run them with bounded concurrency, keep per-key order, commit what is done.

The rules this module keeps (docs/reliability.md lists the tests behind them):
- at most ``concurrency`` records are held (running or waiting for their key) at once;
  past that the partitions are paused (polling goes on, so the member stays in its
  group and answers rebalances) until a handler finishes;
- records with the same key run one after another in offset order; records without a
  key, or with different keys, run concurrently;
- a partition's committed offset only ever moves past records whose handler finished:
  the commit is the lowest offset still in progress (so a crash means redelivery,
  never a skip);
- on revocation and on stop, running handlers get up to ``drain_timeout`` to finish;
  those still running then are cancelled and waited for (bounded), and, not being
  done, are not committed: their records are redelivered. Then what is done is
  committed.

It must never let a handler's exception escape into the fetch loop, and never run on
as a zombie: if the fetch loop or the commit loop ends with an error, ``failure`` holds
it and ``failed`` is set at once (health turns red, ``serve`` stops the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from kourier._aio import DeathWatch, cancel_and_wait
from kourier.errors import BrokerError
from kourier.server.inline import InlineRuns
from kourier.transports.base import GroupConsumer, Record, TopicPartition, Transport

logger = logging.getLogger("kourier.server")

Handler = Callable[[Record], Awaitable[None]]

#: How long a full consumer waits for a free slot before it pauses its partitions.
PAUSE_AFTER = 0.5
#: Seconds a drain waits for handlers it cancelled to end (one that swallows the
#: cancellation is left behind after that, and logged).
CANCEL_WAIT = 5.0
#: Records started per turn of the fetch loop, which then lets the event loop run once
#: before it starts more (see ``_fetch_loop``).
FETCH_BATCH = 16


class _Progress:
    """Offsets of one partition in fetch order; the done prefix is committable."""

    __slots__ = ("committable", "committed", "done", "pending")

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.committable: int | None = None
        self.committed: int | None = None

    def add(self, offset: int) -> None:
        self.pending.append(offset)

    def finish(self, offset: int) -> None:
        pending = self.pending
        if not pending or pending[0] != offset:
            self.done.add(offset)  # an older record is still running: wait for it
            return
        # The oldest record finished (records mostly finish in fetch order): no set.
        pending.popleft()
        self.committable = offset + 1
        done = self.done
        while done and pending and pending[0] in done:
            first = pending.popleft()
            done.discard(first)
            self.committable = first + 1

    def to_commit(self) -> int | None:
        if self.committable is not None and self.committable != self.committed:
            return self.committable
        return None


class RequestConsumer:
    """The consume loop of one service instance."""

    def __init__(
        self,
        transport: Transport,
        topics: Sequence[str],
        group: str,
        handler: Handler,
        *,
        concurrency: int,
        commit_interval: float,
        drain_timeout: float,
        inline: Callable[[Record], bool] = lambda record: True,
    ) -> None:
        self._handler = handler
        #: Which records may start in a shared task (``_launch``); the rest get one each.
        self._inline = inline
        self._concurrency = concurrency
        self._commit_interval = commit_interval
        self._drain_timeout = drain_timeout
        self._consumer: GroupConsumer = transport.group_consumer(
            topics, group, on_assigned=self._on_assigned, on_revoked=self._on_revoked
        )
        self._progress: dict[TopicPartition, _Progress] = {}
        # What runs each held record, by partition, keyed by id() of the record (unique
        # while it is held, also if a rebalance brings the same offset back): the task it
        # waits in, or the InlineRuns whose task will start it.
        self._running: dict[TopicPartition, dict[int, _Runner]] = {}
        self._key_queues: dict[tuple[TopicPartition, bytes], deque[Record]] = {}
        self._held = 0
        self._paused = False
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        #: Monotonic time of the last fetch that returned, for liveness checks.
        self.last_progress = time.monotonic()
        self.assigned: set[TopicPartition] = set()
        #: True once the group first gave this member an assignment (possibly empty: a
        #: group with more members than partitions leaves some idle, and they are
        #: healthy), until stop. It stays True through later rebalances, so readiness
        #: does not flap on every pod a rolling deploy adds.
        self.joined = False
        self.fetched = 0
        self.completed = 0
        #: The error the fetch or commit loop died of; ``failed`` is set when it is.
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
        return self._held

    @property
    def full(self) -> bool:
        return self._held >= self._concurrency

    async def lag(self) -> dict[TopicPartition, int]:
        """Work waiting per partition: records not fetched yet plus those held here."""
        lag = await self._consumer.lag()
        for tp, progress in self._progress.items():
            if tp in lag:
                lag[tp] += len(progress.pending)
        return lag

    async def start(self) -> None:
        await self._consumer.start()
        self._loop_task = asyncio.create_task(self._fetch_loop(), name="kourier-fetch")
        self._commit_task = asyncio.create_task(self._commit_loop(), name="kourier-commit")
        for task in (self._loop_task, self._commit_task):
            self._watch.watch(task)

    async def stop(self) -> None:
        """Stop fetching, let running handlers finish (bounded), commit, leave the group."""
        self._stopping.set()
        self._slot_freed.set()
        try:
            await cancel_and_wait(self._loop_task, self._commit_task)
        except Exception as error:
            # Already logged and kept in ``failure``; stopping still drains and commits
            # what was done.
            if error is not self.failure:
                raise
        await self._drain(set(self._progress))
        try:
            await self._commit()
        except Exception:
            # Leave the group all the same; what was not committed is redelivered.
            logger.exception("the last commit failed; uncommitted records will be redelivered")
        await self._consumer.stop()
        self.joined = False

    # -- fetching ----------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            free = self._concurrency - self._held
            if free <= 0 and not self._paused:
                # Full. Under load a slot frees within milliseconds, so wait for one
                # before pausing: a client may drop what it has prefetched for a paused
                # partition (aiokafka does) and fetch and decode it all again after the
                # resume, which cost more CPU per record than the handler itself.
                if await self._slot_within(PAUSE_AFTER):
                    continue
                # Still full: pause rather than stop polling. Kafka drops a member that
                # stops polling, and polling is also how it takes part in rebalances.
                self._paused = True
                self._consumer.pause(self.assigned)
            elif free > 0 and self._paused:
                self._paused = False
                self._consumer.resume(self.assigned)
            try:
                # While paused, only poll (timeout 0): the wait is for a free slot, below.
                records = await self._consumer.fetch(
                    max(min(free, FETCH_BATCH), 1), timeout=0.0 if self._paused else 0.5
                )
            except BrokerError as exc:
                logger.warning("fetch failed, retrying: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if not self._paused:
                self.last_progress = time.monotonic()
            ready: dict[TopicPartition, list[Record]] = {}
            for record in records:
                if self._accept(record):
                    tp = (record.topic, record.partition)
                    if not self._inline(record):
                        self._launch_alone(tp, record)
                        continue
                    startable = ready.get(tp)
                    if startable is None:
                        ready[tp] = [record]
                    else:
                        startable.append(record)
            for tp, startable in ready.items():
                self._launch(tp, startable)
            if records:
                # Let what is ready run before starting more. asyncio runs ready callbacks
                # in order, and the producer's sender, woken by the first reply, queues
                # behind every handler started before it: starting a whole prefetched
                # batch at once (the client returns it without a wait) would hold every
                # reply until the last handler had run, and caller and service would take
                # turns instead of overlapping.
                await asyncio.sleep(0)
            if self._paused and not records:
                # Nothing can be taken until a handler finishes: wait for that (or for
                # the poll interval, so rebalances are still answered).
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._slot_freed.wait()

    async def _slot_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a handler to finish: True if a slot is free (or
        the consumer is stopping)."""
        self._slot_freed.clear()
        if self._held < self._concurrency:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._slot_freed.wait()
        return self._held < self._concurrency or self._stopping.is_set()

    def _accept(self, record: Record) -> bool:
        """Hold a fetched record; True if it may start now (not behind its key)."""
        tp = (record.topic, record.partition)
        progress = self._progress.get(tp)
        if progress is None:  # a record of a partition we no longer own
            return False
        progress.add(record.offset)
        self._held += 1
        self.fetched += 1
        if record.key is not None:
            chain = (tp, record.key)
            queue = self._key_queues.get(chain)
            if queue is not None:
                queue.append(record)
                return False
            self._key_queues[chain] = deque()
        return True

    def _launch(self, tp: TopicPartition, records: list[Record]) -> None:
        """Start records of one partition: in one task while their handlers finish
        without waiting (``server/inline.py``), a task each from the first that waits."""

        def run(record: Record) -> Coroutine[Any, Any, None]:
            return self._run(tp, record)

        def waiting(record: Record, task: asyncio.Task[None]) -> None:
            running = self._running.get(tp)
            if running is not None and id(record) in running:
                running[id(record)] = task

        def abandoned(record: Record) -> None:
            self._finish(tp, record, done=False)  # cancelled before it started

        runs = InlineRuns(records, run, waiting=waiting, abandoned=abandoned)
        running = self._running.setdefault(tp, {})
        for record in records:
            running[id(record)] = runs

    def _launch_alone(self, tp: TopicPartition, record: Record) -> None:
        """Start one record in a task of its own."""
        task = asyncio.create_task(self._run(tp, record))
        self._running.setdefault(tp, {})[id(record)] = task

    async def _run(self, tp: TopicPartition, record: Record) -> None:
        done = True
        try:
            await self._handler(record)
        except asyncio.CancelledError:
            done = False  # cut off by a drain: not done, so not committed; redelivered
            raise
        except Exception:
            logger.exception("request handling failed at %s", record.where)
        finally:
            self._finish(tp, record, done)

    def _finish(self, tp: TopicPartition, record: Record, done: bool = True) -> None:
        running = self._running.get(tp)
        if running is not None:
            running.pop(id(record), None)
        self._held -= 1
        self.completed += 1
        self.last_progress = time.monotonic()
        self._slot_freed.set()
        progress = self._progress.get(tp)
        if progress is not None and done:
            progress.finish(record.offset)
        if record.key is None:
            return
        chain = (tp, record.key)
        queue = self._key_queues.get(chain)
        if queue and not done:
            # Records queued behind a cancelled one must not run past it: they are
            # redelivered after it, in order.
            self._held -= len(self._key_queues.pop(chain))
        elif queue:
            nxt = queue.popleft()
            if progress is not None:
                self._launch_alone(tp, nxt)
            else:
                self._held -= 1  # partition revoked: drop; it will be redelivered
        else:
            self._key_queues.pop(chain, None)

    # -- committing --------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self._commit_interval)
            await self._commit()

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        offsets: dict[TopicPartition, int] = {}
        for tp, progress in self._progress.items():
            if only is not None and tp not in only:
                continue
            offset = progress.to_commit()
            if offset is not None:
                offsets[tp] = offset
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except BrokerError as exc:
            logger.warning("commit failed (the records will be redelivered): %s", exc)
            return
        for tp, offset in offsets.items():
            if tp in self._progress:
                self._progress[tp].committed = offset

    # -- rebalancing -------------------------------------------------------------------

    async def _on_assigned(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self._progress.setdefault(tp, _Progress())
        self.assigned |= partitions
        self.joined = True
        if self._paused:  # a rebalance forgets pauses
            self._consumer.pause(partitions)
        logger.info("partitions assigned: %s", _names(partitions))

    async def _on_revoked(self, partitions: set[TopicPartition]) -> None:
        logger.info("partitions revoked: %s", _names(partitions))
        await self._drain(partitions)
        await self._commit(partitions)
        for tp in partitions:
            self._progress.pop(tp, None)
            self._running.pop(tp, None)
            for chain in [c for c in self._key_queues if c[0] == tp]:
                self._held -= len(self._key_queues.pop(chain))
        self.assigned -= partitions
        self._slot_freed.set()

    async def _drain(self, partitions: set[TopicPartition]) -> None:
        tasks = self._tasks_of(partitions)
        deadline = time.monotonic() + self._drain_timeout
        # Keyed records queued behind running ones start as those finish: wait for them
        # too, as long as the deadline allows.
        while tasks:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.wait(tasks, timeout=left)
            tasks = [t for t in self._tasks_of(partitions) if not t.done()]
        if tasks:
            logger.warning(
                "%d handlers still running after the drain timeout: cancelling them; their "
                "records will be redelivered",
                len(tasks),
            )
            for task in tasks:
                task.cancel()
            _, stuck = await asyncio.wait(tasks, timeout=CANCEL_WAIT)
            if stuck:
                logger.error(
                    "%d handlers did not end within %.0f s of being cancelled (they catch "
                    "the cancellation or block the event loop); leaving them behind",
                    len(stuck),
                    CANCEL_WAIT,
                )

    def _tasks_of(self, partitions: set[TopicPartition]) -> list[asyncio.Task[None]]:
        """The tasks running (or about to start) the held records of ``partitions``."""
        tasks = {
            runner if isinstance(runner, asyncio.Task) else runner.task
            for tp in partitions
            for runner in self._running.get(tp, {}).values()
        }
        return list(tasks)


_Runner = asyncio.Task[None] | InlineRuns[Record]


def _names(partitions: set[TopicPartition]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(partitions)) or "none"
