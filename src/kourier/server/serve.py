"""Serve an ASGI app over Kafka: wires the transport, the consume loop, the ASGI bridge.

``Service`` owns one instance's life: topics, lifespan startup, consuming, replying,
dead-lettering malformed records, graceful stop. ``serve`` runs one until a signal.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kourier import protocol
from kourier.errors import KourierError, ProtocolError
from kourier.ops.health import HealthServer
from kourier.ops.logging import parent_id_var, request_id_var, service_var
from kourier.ops.tracing import TracingMiddleware
from kourier.protocol import Reply, ReplyAddress, Request
from kourier.server.announce import Announcer
from kourier.server.asgi import JSON_HEADERS, ASGIApp, Outcome, error_body, run_app
from kourier.server.cancels import CancelReader
from kourier.server.consumer import RequestConsumer
from kourier.server.cutoff import CANCELLED, DEADLINE, HandlerCut, RunningHandlers
from kourier.server.dead_letters import H_DEAD_ATTEMPTS as H_DEAD_ATTEMPTS
from kourier.server.dead_letters import H_DEAD_REASON as H_DEAD_REASON
from kourier.server.dead_letters import H_DEAD_SOURCE as H_DEAD_SOURCE
from kourier.server.dead_letters import publish_dead_letter
from kourier.server.hooks import (
    DeadLetterEvent,
    ErrorEvent,
    Hook,
    Hooks,
    ReplyEvent,
    RequestEvent,
)
from kourier.server.http import HttpSide
from kourier.server.idempotency import (
    Idempotency,
    IdempotencyStore,
    MemoryIdempotencyStore,
    Recorded,
    identity,
)
from kourier.server.lifespan import Lifespan
from kourier.server.queue import QueueConsumer, note_dead_lettered
from kourier.server.refusals import Refusals
from kourier.server.reply_sink import ReplySink, settle_all
from kourier.settings import Settings, check_service_name, check_topic_name
from kourier.transports import kafka_transport
from kourier.transports.base import Record, TopicSpec, Transport

logger = logging.getLogger("kourier.server")


@dataclass
class ServiceStats:
    handled: int = 0
    replied: int = 0
    one_way: int = 0
    failed: int = 0
    expired: int = 0
    malformed: int = 0
    dead_letters: int = 0
    retries: int = 0
    duplicates: int = 0
    #: Runs cut short: at the request's deadline, by the caller's cancel (also requests
    #: skipped because their cancel came first), past the one-way time limit.
    cut_at_deadline: int = 0
    cancelled: int = 0
    timed_out: int = 0
    #: Records dead-lettered before the app ran, by why (docs/reliability.md lists them).
    undecodable: int = 0
    too_large: int = 0
    bad_reply_address: int = 0


class Service:
    """One running instance of a service: consumes its request topic and runs the app."""

    def __init__(
        self,
        app: ASGIApp,
        service: str,
        settings: Settings | None = None,
        *,
        transport: Transport | None = None,
        hooks: Mapping[str, Sequence[Hook]] | Hooks | None = None,
        idempotency_store: IdempotencyStore | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        self.hooks = hooks if isinstance(hooks, Hooks) else Hooks(hooks)
        self.name = check_service_name(service)
        #: Shared topics this service consumes besides its own request topic, in its own
        #: group: every service on such a topic gets every request (scatter-gather).
        self.extra_topics = tuple(check_topic_name(t) for t in topics)
        self.settings = settings or Settings.from_env()
        #: The app as served: wrapped in a tracing span when OpenTelemetry is installed.
        self.app: ASGIApp = TracingMiddleware(app, self.name, topic=self.request_topic)
        self.transport = transport or kafka_transport(self.settings)
        self.stats = ServiceStats()
        self.ready = asyncio.Event()
        self._lifespan = Lifespan(app)
        #: Keeps this instance in the service registry (its ``task`` is the heartbeat).
        self.announcer = Announcer(self.transport, self.settings, self.name, app)
        self._consumer: RequestConsumer | QueueConsumer | None = None
        self._started = False
        #: True from the moment ``stop`` begins: readiness turns false while draining.
        self.draining = False
        self._idempotency: Idempotency | None = None
        if self.settings.idempotency_window > 0:
            store = (
                idempotency_store if idempotency_store is not None else (MemoryIdempotencyStore())
            )
            self._idempotency = Idempotency(store, self.settings.idempotency_window)
        self._expired_unlogged = 0
        self._expired_logged_at = 0.0
        #: Runs of the app that a deadline, a time limit or a cancel can cut.
        self.running = RunningHandlers(message_timeout=self.settings.message_timeout)
        self.cancels = CancelReader(
            self.transport, self.settings.cancel_topic(self.name), self.running
        )
        self._refusals = Refusals(self.transport, self.settings.max_request_bytes)

    @property
    def request_topic(self) -> str:
        return self.settings.request_topic(self.name)

    @property
    def dead_letter_topic(self) -> str:
        return self.settings.dead_letter_topic(self.name)

    @property
    def lifespan_state(self) -> dict[str, Any]:
        return self._lifespan.state

    @property
    def consumer(self) -> RequestConsumer | QueueConsumer | None:
        return self._consumer

    @property
    def failure(self) -> BaseException | None:
        """Why a task this instance depends on died (it no longer consumes), or None."""
        return self._consumer.failure if self._consumer is not None else None

    async def start(self) -> None:
        s = self.settings
        await self.transport.start()
        try:
            if s.create_topics:
                await self.transport.ensure_topics(
                    [
                        TopicSpec(self.request_topic, s.partitions, s.replication_factor),
                        TopicSpec(self.dead_letter_topic, s.partitions, s.replication_factor),
                        # Every instance reads all of it: one partition is one reader.
                        TopicSpec(s.cancel_topic(self.name), 1, s.replication_factor),
                        *(
                            TopicSpec(t, s.partitions, s.replication_factor)
                            for t in self.extra_topics
                        ),
                    ]
                )
            await self._lifespan.startup()
            await self.cancels.start()
            await self.announcer.start()
            self._consumer = self._consume_loop()
            await self._consumer.start()
        except BaseException:
            await self.announcer.stop()
            await self.cancels.stop()
            await self._lifespan.shutdown()
            await self.transport.stop()
            raise
        self._started = True
        self.ready.set()
        await self.hooks.emit("start", self)
        logger.info("service %r consuming %s", self.name, self.request_topic)

    def _consume_loop(self) -> RequestConsumer | QueueConsumer:
        """The consume loop ``settings.consumption`` names (docs/design.md compares them)."""
        s = self.settings
        topics = [self.request_topic, *self.extra_topics]
        if s.consumption == "queue":
            return QueueConsumer(
                self.transport,
                topics,
                s.group_for(self.name),
                self._handle,
                lambda record, reason, attempts: self._dead_letter(
                    record, reason, attempts=attempts
                ),
                concurrency=s.concurrency,
                drain_timeout=s.drain_timeout,
            )
        return RequestConsumer(
            self.transport,
            topics,
            s.group_for(self.name),
            self._handle,
            concurrency=s.concurrency,
            commit_interval=s.commit_interval,
            drain_timeout=s.drain_timeout,
            # One-way messages share a task while their handlers do not wait (most never
            # do); two-way requests, which always wait for their replies' acks, get one
            # each, so a fetch's replies are all queued before the producer sends them.
            inline=lambda record: protocol.record_type(record.headers) == protocol.TYPE_MESSAGE,
        )

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self.ready.clear()
        self.draining = True
        await self.announcer.stop()
        if self._consumer is not None:
            await self._consumer.stop()
        await self.cancels.stop()
        await self._lifespan.shutdown()
        await self.transport.stop()
        await self.hooks.emit("stop", self)
        logger.info("service %r stopped: %s", self.name, self.stats)

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- one record ----------------------------------------------------------------------

    async def _handle(self, record: Record) -> None:
        if record.undecodable is not None:
            await self._reject(record, ProtocolError(record.undecodable), undecodable=True)
            return
        try:
            request = protocol.decode_request(record.key, record.value, record.headers)
        except ProtocolError as exc:
            await self._reject(record, exc)
            return
        # bind_request's assignments without its generator: this runs for every record.
        id_token = request_id_var.set(request.id)
        service_token = service_var.set(self.name)
        parent_token = parent_id_var.set(request.parent_id) if request.parent_id else None
        try:
            await self._handle_request(request, record)
        except asyncio.CancelledError:
            logger.warning(
                "handler of request %s cancelled: the service is stopping or gave up the "
                "partition; the record will be redelivered",
                request.id,
            )
            raise
        finally:
            request_id_var.reset(id_token)
            service_var.reset(service_token)
            if parent_token is not None:
                parent_id_var.reset(parent_token)

    async def _handle_request(self, request: Request, record: Record) -> None:
        if request.deadline_ms is not None and protocol.now_ms() > request.deadline_ms:
            self._expired(request)
            await self.hooks.emit("expired", RequestEvent(self.name, request, record))
            return
        if self.running.was_cancelled(request.id):
            self.stats.cancelled += 1
            logger.info("skipped request %s: its caller cancelled it before it came", request.id)
            return
        if not self._refusals.clear_at_once(request) and await self._refused(request, record):
            return
        gate = self._idempotency
        if gate is None:
            await self._handle_once(request, record)
            return
        key = identity(request)
        recorded = await gate.claim(key)
        if recorded is not None:
            self.stats.duplicates += 1
            logger.info("request %s repeats %s: replaying its response", request.id, key)
            await self._replay(request, recorded)
            return
        items: list[Reply] | None = None
        try:
            items = await self._handle_once(request, record)
        finally:
            await gate.finish(key, items)

    async def _handle_once(self, request: Request, record: Record) -> list[Reply] | None:
        """Run the app (with retries for one-way work); the reply items if it succeeded."""
        self.stats.handled += 1
        started = time.perf_counter()
        if self.hooks.has("request"):
            await self.hooks.emit("request", RequestEvent(self.name, request, record))
        sink = ReplySink(self.name, self._publish_reply, request.reply_to)
        attempts = 1 if request.reply_to is not None else self.settings.retry_attempts
        for attempt in range(1, attempts + 1):
            sink.restart()
            outcome = await run_app(
                self.app,
                request,
                self.name,
                sink,
                state=self._lifespan.state if self._lifespan.supported else None,
                max_reply_bytes=self.settings.max_reply_bytes,
                root_path=self.settings.root_path,
                cutoff=self.running.cutoff(request),
            )
            failed = outcome.error_id is not None or (outcome.status or 500) >= 500
            if outcome.error_id is not None and not await self._cut(outcome, request, record):
                self.stats.failed += 1
                error = outcome.error or RuntimeError("the app returned without a response")
                await self.hooks.emit(
                    "error", ErrorEvent(self.name, request, record, error, outcome.error_id)
                )
            if not failed or attempt == attempts:
                break
            self.stats.retries += 1
            delay = min(
                self.settings.retry_backoff * 2 ** (attempt - 1), self.settings.retry_backoff_max
            )
            logger.warning(
                "one-way request %s failed (status %s), attempt %d of %d; retrying in %.2f s",
                request.id,
                outcome.status,
                attempt,
                attempts,
                delay,
            )
            await asyncio.sleep(delay)
        if request.reply_to is None:
            self.stats.one_way += 1
            if failed:
                await self._dead_letter(record, _failure(outcome, attempts), attempts=attempts)
        else:
            self.stats.replied += 1
        if sink.acks:
            await sink.settled()
        if self.hooks.has("reply"):
            event = ReplyEvent(
                self.name,
                request,
                record,
                outcome.status,
                outcome.route,
                time.perf_counter() - started,
                outcome.items,
                outcome.error_id,
            )
            await self.hooks.emit("reply", event)
        return None if failed or not sink.recordable else sink.items

    async def _replay(self, request: Request, recorded: Recorded) -> None:
        if request.reply_to is None:
            return
        acks: list[Awaitable[None]] = []
        for item in recorded.items:
            copy = Reply(
                request.id,
                item.seq,
                item.body,
                item.end,
                item.status,
                item.headers,
                item.error_id,
                self.name,
            )
            try:
                acks.append(await self._publish_reply(request.reply_to, copy))
            except KourierError as exc:
                logger.error("could not replay the response to %s: %s", request.id, exc)
                break
        await settle_all(acks)

    async def _cut(self, outcome: Outcome, request: Request, record: Record) -> bool:
        """Count a run that was cut short; True if it is not the app's failure.

        A run cut at its deadline counts as expired (and emits ``expired``), one its
        caller cancelled as cancelled; a one-way run past its time limit is a failure
        like any other (retried, then dead-lettered), so it is counted and False.
        """
        cut = outcome.error
        if not isinstance(cut, HandlerCut):
            return False
        if cut.reason == DEADLINE:
            self.stats.cut_at_deadline += 1
            self.stats.expired += 1
            await self.hooks.emit("expired", RequestEvent(self.name, request, record))
            return True
        if cut.reason == CANCELLED:
            self.stats.cancelled += 1
            return True
        self.stats.timed_out += 1
        return False

    def _expired(self, request: Request) -> None:
        """Count a skipped request; log a summary at most once a second, not each one."""
        self.stats.expired += 1
        self._expired_unlogged += 1
        logger.debug("skipped request %s: its deadline had passed", request.id)
        now = time.monotonic()
        if now - self._expired_logged_at >= 1.0:
            logger.warning(
                "skipped %d requests whose deadline had passed (latest: %s %s %s)",
                self._expired_unlogged,
                request.id,
                request.method,
                request.path,
            )
            self._expired_unlogged = 0
            self._expired_logged_at = now

    async def _publish_reply(self, to: ReplyAddress, reply: Reply) -> Awaitable[None]:
        key, value, headers = protocol.encode_reply(reply)
        return await self.transport.publish(
            to.topic, value, key=key, headers=headers, partition=to.partition
        )

    async def _error_reply(
        self,
        request_id: str,
        reply_to: ReplyAddress | None,
        status: int,
        detail: str,
        acks: list[Awaitable[None]],
    ) -> None:
        if reply_to is None:
            return
        reply = Reply(
            request_id,
            0,
            error_body(status, detail),
            status=status,
            headers=JSON_HEADERS,
            responder=self.name,
        )
        try:
            acks.append(await self._publish_reply(reply_to, reply))
        except KourierError as exc:
            logger.warning("could not send the %d reply to %s: %s", status, reply_to, exc)

    async def _refused(self, request: Request, record: Record) -> bool:
        """Dead-letter a request the app must not run for (``server/refusals.py``)."""
        refusal = await self._refusals.of(request)
        if refusal is None:
            return False
        setattr(self.stats, refusal.why, getattr(self.stats, refusal.why) + 1)
        logger.error("request %s at %s refused: %s", request.id, record.where, refusal.reason)
        await self._dead_letter(record, refusal.reason, attempts=0)
        if refusal.status is not None:
            acks: list[Awaitable[None]] = []
            await self._error_reply(
                request.id, request.reply_to, refusal.status, refusal.reason, acks
            )
            await settle_all(acks)
        return True

    async def _reject(
        self, record: Record, exc: ProtocolError, *, undecodable: bool = False
    ) -> None:
        """A record that breaks the format, or that the Kafka client could not read: log,
        dead-letter, answer 400 if its request id and a reply address can be read."""
        kind = "undecodable" if undecodable else "malformed"
        if undecodable:
            self.stats.undecodable += 1
        else:
            self.stats.malformed += 1
        logger.error("%s record at %s: %s", kind, record.where, exc)
        await self._dead_letter(record, f"{kind} record: {exc}", attempts=0)
        acks: list[Awaitable[None]] = []
        request_id = protocol.request_id_of(record.headers)
        reply_to = protocol.reply_to_of(record.headers)
        if (
            request_id is not None
            and reply_to is not None
            and await self._refusals.can_answer(reply_to)
        ):
            await self._error_reply(request_id, reply_to, 400, f"{kind} request: {exc}", acks)
        await settle_all(acks)

    async def _dead_letter(self, record: Record, reason: str, *, attempts: int) -> None:
        """Copy a record to the dead-letter topic with why, where from and how often.

        Returns once the broker has acknowledged the copy, trying again until it does:
        the record's offset counts as done when this returns, so giving up would lose
        the record. A stop that cannot wait cancels this; the record is then not
        committed and comes back to the next consumer.
        """
        await publish_dead_letter(
            self.transport, self.dead_letter_topic, record, reason, attempts=attempts
        )
        self.stats.dead_letters += 1
        note_dead_lettered()
        logger.error("dead-lettered the record at %s: %s", record.where, reason)
        await self.hooks.emit("dead_letter", DeadLetterEvent(self.name, record, reason))


def _failure(outcome: Outcome, attempts: int) -> str:
    """Why a one-way message is dead-lettered, from its last attempt's outcome."""
    if isinstance(outcome.error, HandlerCut):
        what = f"handler {outcome.error.describe()}"
    else:
        what = f"handler failed with status {outcome.status}"
    error_id = f" (error id {outcome.error_id})" if outcome.error_id else ""
    return f"{what} after {attempts} attempts{error_id}"


async def serve(
    app: ASGIApp,
    service: str,
    settings: Settings | None = None,
    *,
    transport: Transport | None = None,
    hooks: Mapping[str, Sequence[Hook]] | Hooks | None = None,
    http_port: int | None = None,
    http_host: str = "0.0.0.0",
    health_port: int | None = None,
    health_host: str = "0.0.0.0",
    stall_timeout: float = 120.0,
    topics: Sequence[str] = (),
    ready: Callable[[Service], object] | None = None,
) -> None:
    """Serve ``app`` as ``service`` until SIGTERM or SIGINT; a second signal stops at once.

    With ``http_port`` the same app answers HTTP on that port as well (migration). With
    ``health_port``, ``/livez``, ``/readyz`` and ``/metrics`` answer on that port from
    before the service starts until after it has stopped.
    """
    service_var.set(service)
    instance = Service(app, service, settings, transport=transport, hooks=hooks, topics=topics)
    health: HealthServer | None = None
    if health_port is not None:
        health = HealthServer(instance, health_port, health_host, stall_timeout=stall_timeout)
        await health.start()
        logger.info("health and metrics on %s:%d", health_host, health.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            logger.info("stopping: draining in-flight requests (signal again to stop at once)")
            stop.set()
        else:
            logger.warning("second signal: stopping at once")
            os._exit(1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    http: HttpSide | None = None
    try:
        await instance.start()
        if http_port is not None:
            http = HttpSide(
                instance.app,
                http_port,
                http_host,
                instance.lifespan_state,
                root_path=instance.settings.root_path,
            )
            await http.start()
            logger.info("serving HTTP on %s:%d as well", http_host, http.port)
        # What exists by now (the app, its framework, the clients) lives as long as the
        # process: take it out of the collector's way. Under load a full collection runs
        # about every second (what is in flight whenever the young generations are
        # collected counts as long-lived), and each walked every object of the app and
        # its libraries: a 20-60 ms pause that every call in flight waited through.
        gc.collect()
        gc.freeze()
        if ready is not None:
            ready(instance)
        await _stopped_or_failed(stop, instance)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        instance.draining = True
        if http is not None:
            await http.stop()
        await instance.stop()
        if health is not None:
            await health.stop()
    if instance.failure is not None:
        raise KourierError(
            f"service {service!r} stopped because a task it needs died: {instance.failure!r}"
        ) from instance.failure


async def _stopped_or_failed(stop: asyncio.Event, instance: Service) -> None:
    """Wait for a stop signal, or for a task of the instance to die (then exit non-zero,
    so an orchestrator restarts the process instead of keeping a zombie)."""
    consumer = instance.consumer
    waits = [asyncio.ensure_future(stop.wait())]
    if consumer is not None:
        waits.append(asyncio.ensure_future(consumer.failed.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    if instance.failure is not None:
        logger.critical("stopping: %r", instance.failure)
