"""Serve an ASGI app over Kafka: wires the transport, the consume loop, the ASGI bridge.

``Service`` owns one instance's life: topics, lifespan startup, consuming, replying,
dead-lettering malformed records, graceful stop. ``serve`` runs one until a signal.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from kourier import protocol
from kourier.errors import KourierError, ProtocolError
from kourier.protocol import Reply, ReplyAddress
from kourier.server.asgi import JSON_HEADERS, ASGIApp, error_body, run_app
from kourier.server.consumer import RequestConsumer
from kourier.server.lifespan import Lifespan
from kourier.settings import Settings, check_service_name
from kourier.transports.base import Record, TopicSpec, Transport

logger = logging.getLogger("kourier.server")

H_DEAD_REASON = "kourier-dead-letter-reason"
H_DEAD_SOURCE = "kourier-dead-letter-source"


@dataclass
class ServiceStats:
    handled: int = 0
    replied: int = 0
    one_way: int = 0
    failed: int = 0
    expired: int = 0
    malformed: int = 0
    dead_letters: int = 0


class Service:
    """One running instance of a service: consumes its request topic and runs the app."""

    def __init__(
        self,
        app: ASGIApp,
        service: str,
        settings: Settings | None = None,
        *,
        transport: Transport | None = None,
    ) -> None:
        self.app = app
        self.name = check_service_name(service)
        self.settings = settings or Settings.from_env()
        self.transport = transport or _kafka_transport(self.settings)
        self.stats = ServiceStats()
        self.ready = asyncio.Event()
        self._lifespan = Lifespan(app)
        self._consumer: RequestConsumer | None = None
        self._started = False

    @property
    def request_topic(self) -> str:
        return self.settings.request_topic(self.name)

    @property
    def dead_letter_topic(self) -> str:
        return self.settings.dead_letter_topic(self.name)

    @property
    def consumer(self) -> RequestConsumer | None:
        return self._consumer

    async def start(self) -> None:
        s = self.settings
        await self.transport.start()
        try:
            if s.create_topics:
                await self.transport.ensure_topics(
                    [
                        TopicSpec(self.request_topic, s.partitions, s.replication_factor),
                        TopicSpec(self.dead_letter_topic, s.partitions, s.replication_factor),
                    ]
                )
            await self._lifespan.startup()
            self._consumer = RequestConsumer(
                self.transport,
                [self.request_topic],
                s.group_for(self.name),
                self._handle,
                concurrency=s.concurrency,
                commit_interval=s.commit_interval,
                drain_timeout=s.drain_timeout,
            )
            await self._consumer.start()
        except BaseException:
            await self._lifespan.shutdown()
            await self.transport.stop()
            raise
        self._started = True
        self.ready.set()
        logger.info("service %r consuming %s", self.name, self.request_topic)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self.ready.clear()
        if self._consumer is not None:
            await self._consumer.stop()
        await self._lifespan.shutdown()
        await self.transport.stop()
        logger.info("service %r stopped: %s", self.name, self.stats)

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- one record ----------------------------------------------------------------------

    async def _handle(self, record: Record) -> None:
        try:
            request = protocol.decode_request(record.key, record.value, record.headers)
        except ProtocolError as exc:
            await self._reject(record, exc)
            return
        if request.deadline_ms is not None and protocol.now_ms() > request.deadline_ms:
            self.stats.expired += 1
            logger.debug("skipped request %s: its deadline has passed", request.id)
            return
        acks: list[Awaitable[None]] = []
        if len(request.body) > self.settings.max_request_bytes:
            await self._error_reply(
                request.id, request.reply_to, 413, "request body too large", acks
            )
            await _all(acks)
            return
        self.stats.handled += 1

        async def sink(reply: Reply) -> None:
            if request.reply_to is not None:
                acks.append(await self._publish_reply(request.reply_to, reply))

        outcome = await run_app(
            self.app,
            request,
            self.name,
            sink,
            state=self._lifespan.state if self._lifespan.supported else None,
            max_reply_bytes=self.settings.max_reply_bytes,
        )
        if outcome.error_id is not None:
            self.stats.failed += 1
        if request.reply_to is None:
            self.stats.one_way += 1
        else:
            self.stats.replied += 1
        await _all(acks)

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
            request_id, 0, error_body(status, detail), status=status, headers=JSON_HEADERS
        )
        try:
            acks.append(await self._publish_reply(reply_to, reply))
        except KourierError as exc:
            logger.warning("could not send the %d reply to %s: %s", status, reply_to, exc)

    async def _reject(self, record: Record, exc: ProtocolError) -> None:
        """A record that breaks the format: log, dead-letter, answer 400 if we can."""
        self.stats.malformed += 1
        logger.error("malformed record at %s: %s", record.where, exc)
        acks: list[Awaitable[None]] = []
        headers = [
            *[(n, v) for n, v in record.headers if isinstance(n, str)],
            (H_DEAD_REASON, str(exc).encode("utf-8", "replace")[:1000]),
            (H_DEAD_SOURCE, record.where.encode("utf-8", "replace")),
        ]
        try:
            acks.append(
                await self.transport.publish(
                    self.dead_letter_topic, record.value or b"", key=record.key, headers=headers
                )
            )
            self.stats.dead_letters += 1
        except KourierError as error:
            logger.error("could not dead-letter the record at %s: %s", record.where, error)
        request_id = protocol.request_id_of(record.headers)
        reply_to = protocol.reply_to_of(record.headers)
        if request_id is not None:
            await self._error_reply(request_id, reply_to, 400, f"malformed request: {exc}", acks)
        await _all(acks)


async def _all(acks: list[Awaitable[None]]) -> None:
    for ack in acks:
        try:
            await ack
        except KourierError as exc:
            logger.error("a reply was not acknowledged by the broker: %s", exc)


def _kafka_transport(settings: Settings) -> Transport:
    from kourier.transports.kafka import KafkaTransport

    return KafkaTransport(settings)


async def serve(
    app: ASGIApp,
    service: str,
    settings: Settings | None = None,
    *,
    transport: Transport | None = None,
    ready: Any = None,
) -> None:
    """Serve ``app`` as ``service`` until SIGTERM or SIGINT; a second signal stops at once."""
    instance = Service(app, service, settings, transport=transport)
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
            raise SystemExit(1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await instance.start()
        if ready is not None:
            ready()
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await instance.stop()
