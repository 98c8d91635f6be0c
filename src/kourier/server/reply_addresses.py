"""Whether a request's reply address can be answered, asked before the app runs.

A reply address names a topic and a partition (``kourier-reply-to``). One whose topic
does not exist, has no such partition, or is not a legal topic name can never get its
reply: the service dead-letters such a request at once rather than run the app for
nothing. Publishing to it would also hold the handler's slot while the transport waits
for the topic to appear.

Reply topics that exist are remembered (their partition counts), so a healthy caller
costs one metadata look-up per service instance; an address that fails is looked up
each time it comes (the topic may have been created since). In a cluster a topic
created a moment ago may not have reached the broker asked yet, so a missing one is
looked for twice more, 0.1 s and 0.3 s later (``RECHECK_DELAYS``): a request to a
topic that does not exist holds its slot 0.4 s, not the publish's 2 s plus the app's
run. It must never refuse a request only because the broker could not be asked: then
the address counts as good, and a reply that fails later is logged where it fails.
"""

from __future__ import annotations

import asyncio
import logging

from kourier.errors import BrokerError, SettingsError
from kourier.protocol import ReplyAddress
from kourier.settings import check_topic_name
from kourier.transports.base import Transport

logger = logging.getLogger("kourier.server")

#: Reply topics remembered at most; past that the oldest is forgotten (a cluster has
#: few reply topics, so this only bounds what hostile records could make it hold).
MAX_REMEMBERED = 1024
#: Seconds before looking for a reply topic the broker did not know, again.
RECHECK_DELAYS = (0.1, 0.3)


class ReplyAddresses:
    """Checks reply addresses against the broker's topics, remembering good ones."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._partitions: dict[str, int] = {}

    async def problem(self, address: ReplyAddress) -> str | None:
        """Why replies to ``address`` cannot be sent, or None if they can (or if the
        broker could not be asked)."""
        try:
            check_topic_name(address.topic)
        except SettingsError:
            return f"{address.topic!r} is not a legal topic name"
        count = self._partitions.get(address.topic)
        if count is not None and address.partition < count:
            return None
        count = None
        for delay in (*RECHECK_DELAYS, None):
            try:
                found = await self._transport.describe_topics([address.topic])
            except BrokerError as err:
                logger.debug("cannot check reply address %s now: %s", address, err)
                return None
            info = found.get(address.topic)
            if info is not None:
                count = info.partitions
                self._remember(address.topic, count)
                break
            if delay is not None:
                await asyncio.sleep(delay)
        if count is None:
            return f"reply topic {address.topic!r} does not exist"
        if address.partition >= count:
            return f"reply topic {address.topic!r} has no partition {address.partition}"
        return None

    def _remember(self, topic: str, partitions: int) -> None:
        self._partitions.pop(topic, None)
        if len(self._partitions) >= MAX_REMEMBERED:
            del self._partitions[next(iter(self._partitions))]
        self._partitions[topic] = partitions
