"""Read the service's cancels topic and cut the handlers its records name.

Callers that stop waiting publish a cancel record (docs/protocol.md, "Deadlines and
cancels") to ``<prefix><service>.cancels``. Every instance reads every partition of that
topic from its end, without a consumer group, since any instance may be the one running
the request; an instance not running it remembers the id for a while (the request may
still be waiting in a backlog). The topic is apart from the request topic so that a
cancel never waits behind a paused partition or the very request it should stop.

It must never stop on bad input or a broker hiccup: a malformed record is logged and
skipped, a failed fetch is retried. It never publishes anything.
"""

from __future__ import annotations

import asyncio
import logging

from kourier._aio import cancel_and_wait
from kourier.errors import BrokerError, ProtocolError
from kourier.protocol import decode_cancel
from kourier.server.cutoff import RunningHandlers
from kourier.transports.base import PartitionReader, Record, Transport

logger = logging.getLogger("kourier.server")

_FETCH_TIMEOUT = 1.0
_MAX_BACKOFF = 2.0


class CancelReader:
    """The cancels of one service instance: reads them and cuts the named runs."""

    def __init__(self, transport: Transport, topic: str, running: RunningHandlers) -> None:
        self.topic = topic
        self._transport = transport
        self._running = running
        self._readers: list[PartitionReader] = []
        self._tasks: list[asyncio.Task[None]] = []
        #: Cancel records read, and runs they cut.
        self.received = 0
        self.cut = 0

    async def start(self) -> None:
        """Fix every partition's position at its end; cancels published later are read."""
        try:
            partitions = await self._transport.partition_count(self.topic)
        except BrokerError as exc:
            logger.warning(
                "no cancels topic %r (%s): callers cannot cancel this service's handlers, "
                "which still end at their deadlines; create it with 'kourier topics ensure'",
                self.topic,
                exc,
            )
            return
        try:
            for partition in range(partitions):
                reader = self._transport.partition_reader(self.topic, partition)
                await reader.start()
                self._readers.append(reader)
        except BaseException:
            await self.stop()
            raise
        self._tasks = [
            asyncio.create_task(self._read(reader), name=f"kourier cancels {self.topic}")
            for reader in self._readers
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        readers, self._readers = self._readers, []
        for reader in readers:
            await reader.stop()

    async def _read(self, reader: PartitionReader) -> None:
        backoff = 0.1
        while True:
            try:
                records = await reader.fetch(_FETCH_TIMEOUT)
            except Exception:
                logger.exception("could not fetch cancels; retrying in %.1f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            backoff = 0.1
            for record in records:
                self.handle(record)

    def handle(self, record: Record) -> None:
        """Cut the runs one cancel record names; log and skip a malformed one."""
        try:
            cancel = decode_cancel(record.headers)
        except ProtocolError as exc:
            logger.warning("skipped malformed cancel record at %s: %s", record.where, exc)
            return
        self.received += 1
        cut = self._running.cancel(cancel.request_id)
        self.cut += cut
        logger.debug(
            "cancel for request %s (%s): %s",
            cancel.request_id,
            cancel.reason or "no reason given",
            f"cut {cut} running handler(s)" if cut else "not running here; remembered",
        )
