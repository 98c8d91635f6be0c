"""Copies of records a service could not process, on its dead-letter topic.

A dead letter keeps the record's key, value and readable headers, and adds why, where
from and after how many attempts (docs/protocol.md). Publishing one never gives up: the
record's offset counts as done once it returns, so a copy the broker refused is tried
again (logged each time) until it takes it, or a stop cancels the wait.
"""

from __future__ import annotations

import asyncio
import logging

from kourier.errors import KourierError
from kourier.transports.base import Record, Transport

logger = logging.getLogger("kourier.server")

H_DEAD_REASON = "kourier-dead-letter-reason"
H_DEAD_SOURCE = "kourier-dead-letter-source"
H_DEAD_ATTEMPTS = "kourier-dead-letter-attempts"
#: Seconds before trying a dead letter the broker did not acknowledge again; doubled
#: each time, up to the maximum.
DEAD_LETTER_RETRY = 0.5
DEAD_LETTER_RETRY_MAX = 5.0


def dead_letter_headers(record: Record, reason: str, attempts: int) -> list[tuple[str, bytes]]:
    """The record's headers (those readable as text) and the three dead-letter ones."""
    return [
        *[(n, v) for n, v in record.headers if isinstance(n, str)],
        (H_DEAD_REASON, reason.encode("utf-8", "replace")[:1000]),
        (H_DEAD_SOURCE, record.where.encode("utf-8", "replace")),
        (H_DEAD_ATTEMPTS, str(attempts).encode("ascii")),
    ]


async def publish_dead_letter(
    transport: Transport, topic: str, record: Record, reason: str, *, attempts: int
) -> None:
    """Publish the dead letter of ``record`` to ``topic``; return once acknowledged."""
    headers = dead_letter_headers(record, reason, attempts)
    delay = DEAD_LETTER_RETRY
    while True:
        try:
            await (
                await transport.publish(topic, record.value or b"", key=record.key, headers=headers)
            )
            return
        except KourierError as error:
            logger.error(
                "could not dead-letter the record at %s, trying again in %.1f s: %s",
                record.where,
                delay,
                error,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, DEAD_LETTER_RETRY_MAX)
