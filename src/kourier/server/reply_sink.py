"""Where one request's reply items go: to its caller's reply address, and into the
idempotency record. It must never raise a broker failure into the app: a reply the
broker did not take is logged, and the app's response stands.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from kourier.errors import KourierError
from kourier.protocol import Reply, ReplyAddress

logger = logging.getLogger("kourier.server")

#: A reply longer than this is not kept for the idempotency record (see ReplySink).
RECORD_MAX_BYTES = 1024 * 1024
#: How often a streamed reply lets the producer send what it has queued.
STREAM_FLUSH_INTERVAL = 0.005
#: Acknowledgements held before the settled ones are dropped (a long stream).
ACKS_PRUNE_AT = 1024

#: Queue a reply item for the broker; the awaitable it returns is the acknowledgement.
Publish = Callable[[ReplyAddress, Reply], Awaitable[Awaitable[None]]]


class ReplySink:
    """Where one request's reply items go: to its caller, and into the idempotency record.

    The record keeps the items only while they total at most ``RECORD_MAX_BYTES``; a
    longer reply (a long stream) is not recorded, so a repeat runs the handler again
    rather than the service holding the stream in memory. Acknowledgements are awaited
    at the end, and those already settled are dropped on the way, so an endless stream
    holds a bounded list. A streamed reply waits until the broker has its first item
    (status and headers), then gives the producer the loop every
    ``STREAM_FLUSH_INTERVAL``: an app that writes items without awaiting anything would
    otherwise hold them all until a batch fills.
    """

    def __init__(self, responder: str, publish: Publish, reply_to: ReplyAddress | None) -> None:
        self._responder = responder
        self._publish = publish
        self._reply_to = reply_to
        self.acks: list[Awaitable[None]] = []
        self._yielded_at = 0.0
        self.items: list[Reply] = []
        self.recordable = True
        self._bytes = 0

    def restart(self) -> None:
        """Forget the items of a failed attempt (one-way work is retried)."""
        self.items.clear()
        self.recordable = True
        self._bytes = 0

    async def __call__(self, reply: Reply) -> None:
        reply.responder = self._responder
        if self.recordable:
            self._bytes += len(reply.body)
            if self._bytes > RECORD_MAX_BYTES:
                self.recordable = False
                self.items.clear()
            else:
                self.items.append(reply)
        if self._reply_to is None:
            return
        try:
            ack = asyncio.ensure_future(await self._publish(self._reply_to, reply))
        except KourierError as exc:
            # Not even queued (no broker could be asked about the reply topic, or no room
            # in the producer): the same as a reply the broker did not acknowledge. The
            # app's response stands and stays recorded, so a retry is answered from the
            # store; raising here would make the app fail and end the reply with an error.
            logger.error("reply item %d to %s was not sent: %s", reply.seq, self._reply_to, exc)
            return
        self.acks.append(ack)
        if len(self.acks) >= ACKS_PRUNE_AT:
            self.acks = pending(self.acks)
        if reply.end:
            return
        if reply.seq == 0:
            # The status and first item of a stream go out before the app makes more: a
            # single yield does not get them sent (aiokafka's sender needs a few turns of
            # the loop), and an app that writes without awaiting would hold them back
            # until its next pause. One round trip, once per stream.
            await asyncio.wait([ack])
            self._yielded_at = time.monotonic()
            return
        now = time.monotonic()
        if now - self._yielded_at >= STREAM_FLUSH_INTERVAL:
            self._yielded_at = now
            await asyncio.sleep(0)

    async def settled(self) -> None:
        await settle_all(self.acks)


def pending(acks: list[Awaitable[None]]) -> list[Awaitable[None]]:
    """The acknowledgements still pending; failures among the settled ones are logged."""
    pending: list[Awaitable[None]] = []
    for ack in acks:
        if isinstance(ack, asyncio.Future) and ack.done():
            if not ack.cancelled() and (error := ack.exception()) is not None:
                logger.error("a reply was not acknowledged by the broker: %s", error)
        else:
            pending.append(ack)
    return pending


async def settle_all(acks: list[Awaitable[None]]) -> None:
    """Wait for every acknowledgement; one the broker refused is logged, not raised."""
    for ack in acks:
        try:
            await ack
        except KourierError as exc:
            logger.error("a reply was not acknowledged by the broker: %s", exc)
