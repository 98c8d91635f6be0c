"""Share-group members (Kafka's queues, KIP-932) on confluent-kafka's ``ShareConsumer``.

Kept apart from ``transports/confluent.py`` (the rest of the librdkafka adapter, whose
connection settings, admin client and record conversion it reuses): a share consumer
has its own rules. librdkafka marks it "Preview" (it logs so when one is created).

* Explicit acknowledgement mode: each record is acknowledged with ACCEPT, RELEASE or
  REJECT, and a ``poll`` is refused while a record of the previous one is not. The
  client cannot renew a lock (the broker's RENEW type is not exposed), so kourier
  bounds handler time instead (``server/queue.py``).
* One thread owns each ``ShareConsumer`` (it is not thread-safe): the loop queues
  commands (poll, acknowledge, stop) to it. Acknowledgements queued together are sent
  in one ``commit_sync``, whose per-partition answer settles their futures, so an
  ``acknowledge`` returns once the broker has it.
* ``max.poll.records`` is a hint: a poll returns whole batches of the log.
* At start the group is set to begin at the earliest record if nobody chose otherwise
  (``share.auto.offset.reset``), and its lock duration and delivery limit are read.

It must never wait on the broker without a bound, never hand a record to nobody (a
poll whose caller has gone releases what it got), and never log a secret.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import AcknowledgeType, KafkaException, Message
from confluent_kafka import ShareConsumer as KafkaShareConsumer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    ResourceType,
)

from kourier.errors import BrokerError
from kourier.transports.base import Acknowledgement, Delivery, ShareConsumer, TopicPartition
from kourier.transports.confluent import REQUEST_TIMEOUT, _reason, _record

if TYPE_CHECKING:
    from kourier.transports.confluent import ConfluentTransport

log = logging.getLogger(__name__)

_ACK_TYPES = {
    Acknowledgement.ACCEPT: AcknowledgeType.ACCEPT,
    Acknowledgement.RELEASE: AcknowledgeType.RELEASE,
    Acknowledgement.REJECT: AcknowledgeType.REJECT,
}
_LOCK = "share.record.lock.duration.ms"
_LIMIT = "share.delivery.count.limit"
_RESET = "share.auto.offset.reset"
#: Seconds a stop waits for the thread to close the consumer (commit, leave the group).
CLOSE_WAIT = REQUEST_TIMEOUT + 5


@dataclass
class _Poll:
    timeout: float
    future: asyncio.Future[list[Delivery]]


@dataclass
class _Ack:
    delivery: Delivery
    how: Acknowledgement
    future: asyncio.Future[None]


class _Stop:
    pass


_Command = _Poll | _Ack | _Stop


class ConfluentShareConsumer(ShareConsumer):
    def __init__(
        self,
        transport: ConfluentTransport,
        topics: Sequence[str],
        group: str,
        max_records: int,
    ) -> None:
        self._transport = transport
        self._topics = list(topics)
        self._group = group
        # librdkafka refuses ``allow.auto.create.topics`` on a share consumer (any value,
        # in 2.16's preview); the topic is made to exist before, so leaving it out is safe.
        shared = {k: v for k, v in transport._config.items() if k != "allow.auto.create.topics"}
        self._config: dict[str, Any] = {
            **shared,
            "group.id": group,
            "share.acknowledgement.mode": "explicit",
            "max.poll.records": max_records,
        }
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        #: Messages polled and not acknowledged yet, by where they are: the thread's own.
        self._held: dict[tuple[str, int, int], Message] = {}

    async def start(self) -> None:
        await self._configure_group()
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        started: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name=f"kourier-share-{self._group}", daemon=True
        )
        self._thread.start()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await started
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._thread is None or self._stopped is None:
            return
        self._commands.put(_Stop())
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                await asyncio.shield(self._stopped)
        except TimeoutError:
            log.warning("share consumer of %r did not close in %.0f s", self._group, CLOSE_WAIT)
        self._thread = None

    async def fetch(self, timeout: float) -> list[Delivery]:
        future = self._running_loop().create_future()
        self._commands.put(_Poll(timeout, future))
        deliveries: list[Delivery] = await future
        return deliveries

    async def acknowledge(self, delivery: Delivery, how: Acknowledgement) -> None:
        future: asyncio.Future[None] = self._running_loop().create_future()
        self._commands.put(_Ack(delivery, how, future))
        await future

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._thread is None or self._loop is None:
            raise BrokerError("share consumer is not started")
        return self._loop

    # -- the group's settings ------------------------------------------------------------

    async def _configure_group(self) -> None:
        transport = self._transport
        admin = transport._running_admin()
        resource = ConfigResource(ResourceType.GROUP, self._group)
        try:
            found = await transport._admin_results(
                admin.describe_configs([resource], request_timeout=REQUEST_TIMEOUT)
            )
            entries = found[resource]
            if isinstance(entries, BaseException):
                raise entries
            reset = entries.get(_RESET)
            if reset is None or reset.source != ConfigSource.GROUP_CONFIG.value:
                await self._start_at_earliest()
            if _LOCK in entries:
                self.lock_seconds = int(entries[_LOCK].value) / 1000
            if _LIMIT in entries:
                self.delivery_limit = int(entries[_LIMIT].value)
        except (KafkaException, BrokerError, ValueError) as err:
            log.warning(
                "could not read or set the settings of share group %r (%s): assuming Kafka's "
                "defaults, a %.0f s lock and %d deliveries",
                self._group,
                _reason(err),
                self.lock_seconds,
                self.delivery_limit,
            )

    async def _start_at_earliest(self) -> None:
        entry = ConfigEntry(_RESET, "earliest", incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource(ResourceType.GROUP, self._group, incremental_configs=[entry])
        transport = self._transport
        admin = transport._running_admin()
        results = await transport._admin_results(
            admin.incremental_alter_configs([resource], request_timeout=REQUEST_TIMEOUT)
        )
        error = results[resource]
        if isinstance(error, BaseException):
            raise error
        log.info("share group %r set to start at the earliest record", self._group)

    # -- the consumer's thread -----------------------------------------------------------

    def _run(self, started: asyncio.Future[None]) -> None:
        try:
            consumer = KafkaShareConsumer(self._config)
            consumer.subscribe(self._topics)
        except (KafkaException, ValueError, TypeError) as err:
            self._call(_fail, started, BrokerError(f"cannot join share group: {_reason(err)}"))
            self._call(_resolve, self._stopped, None)
            return
        self._call(_resolve, started, None)
        try:
            while True:
                command = self._commands.get()
                if isinstance(command, _Stop):
                    break
                if isinstance(command, _Poll):
                    self._poll(consumer, command)
                else:
                    self._acknowledge(consumer, [command, *self._more_acks()])
        finally:
            self._close(consumer)

    def _more_acks(self) -> list[_Ack]:
        """The acknowledgements already queued behind one, to send in the same commit."""
        acks: list[_Ack] = []
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return acks
            if not isinstance(command, _Ack):
                # Only acknowledgements are sent while records are held; put it back.
                self._commands.put(command)
                return acks
            acks.append(command)

    def _poll(self, consumer: KafkaShareConsumer, command: _Poll) -> None:
        try:
            messages = list(consumer.poll(command.timeout))
        except KafkaException as err:
            self._call(_fail, command.future, BrokerError(f"fetch failed: {_reason(err)}"))
            return
        except Exception as err:  # IllegalStateException: a batch not acknowledged
            self._call(_fail, command.future, BrokerError(f"fetch refused: {err}"))
            return
        deliveries: list[Delivery] = []
        for message in messages:
            error = message.error()
            if error is not None:
                log.warning("share group %r: %s", self._group, error.str())
                continue
            record = _record(message)
            self._held[(record.topic, record.partition, record.offset)] = message
            deliveries.append(Delivery(record, message.delivery_count() or 1))
        self._call(self._hand_over, command.future, deliveries)

    def _hand_over(
        self, future: asyncio.Future[list[Delivery]], deliveries: list[Delivery]
    ) -> None:
        """On the loop: give the records to the fetch, or back to the group if it has gone."""
        if not future.done():
            future.set_result(deliveries)
            return
        loop = asyncio.get_running_loop()
        for delivery in deliveries:
            gone: asyncio.Future[None] = loop.create_future()
            # Nobody awaits it: take its outcome so a failure is not reported as lost.
            gone.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._commands.put(_Ack(delivery, Acknowledgement.RELEASE, gone))

    def _acknowledge(self, consumer: KafkaShareConsumer, acks: list[_Ack]) -> None:
        sent: dict[TopicPartition, list[_Ack]] = {}
        for ack in acks:
            record = ack.delivery.record
            message = self._held.pop((record.topic, record.partition, record.offset), None)
            if message is None:
                self._call(_fail, ack.future, BrokerError(f"{record.where} is not held here"))
                continue
            try:
                consumer.acknowledge(message, _ACK_TYPES[ack.how])
            except Exception as err:  # IllegalStateException: no longer in flight
                self._call(_fail, ack.future, BrokerError(f"{record.where}: {err}"))
                continue
            sent.setdefault((record.topic, record.partition), []).append(ack)
        if not sent:
            return
        try:
            results = consumer.commit_sync(REQUEST_TIMEOUT)
        except KafkaException as err:
            failure = BrokerError(f"acknowledgement failed: {_reason(err)}")
            for waiting in sent.values():
                for ack in waiting:
                    self._call(_fail, ack.future, failure)
            return
        refused = {
            (tp.topic, tp.partition): error
            for tp, error in (results or {}).items()
            if error is not None
        }
        for tp, waiting in sent.items():
            error = refused.get(tp)
            for ack in waiting:
                if error is None:
                    self._call(_resolve, ack.future, None)
                else:
                    why = _reason(error) if isinstance(error, BaseException) else str(error)
                    self._call(_fail, ack.future, BrokerError(f"acknowledgement refused: {why}"))

    def _close(self, consumer: KafkaShareConsumer) -> None:
        """Release what is still held, answer what is still queued, leave the group."""
        leftovers: list[_Ack] = []
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, _Ack):
                leftovers.append(command)
            elif isinstance(command, _Poll):
                self._call(_fail, command.future, BrokerError("share consumer stopped"))
        for message in list(self._held.values()):
            try:
                consumer.acknowledge(message, AcknowledgeType.RELEASE)
            except Exception as err:
                log.debug("could not release %s: %s", _record(message).where, err)
        self._held.clear()
        for ack in leftovers:
            self._call(_fail, ack.future, BrokerError("share consumer stopped"))
        try:
            consumer.close()
        except KafkaException as err:
            log.warning("share consumer of %r closed with an error: %s", self._group, _reason(err))
        finally:
            self._call(_resolve, self._stopped, None)

    def _call(self, callback: Callable[..., object], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback, *args)


def _resolve(future: asyncio.Future[Any] | None, result: object) -> None:
    if future is not None and not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any] | None, error: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(error)
