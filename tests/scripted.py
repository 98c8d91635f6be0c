"""A memory transport whose acknowledgements the test decides."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from kourier.transports.memory import MemoryBroker, MemoryTransport

#: Given a record's topic and value, the future to hand back as its ack (None: acknowledged
#: now). Raising refuses the record before it is stored, as a producer that cannot queue it.
AckScript = Callable[[str, bytes], "asyncio.Future[None] | None"]


class ScriptedTransport(MemoryTransport):
    """Stores each record at once and hands back the ack ``script`` makes for it.

    Unlike ``MemoryTransport`` it never gives up the loop in ``publish``, as aiokafka
    does not while its batch has room.
    """

    def __init__(self, broker: MemoryBroker | None = None, script: AckScript | None = None):
        super().__init__(broker)
        self._script = script

    async def publish(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> Awaitable[None]:
        ack = self._script(topic, value or b"") if self._script is not None else None
        self.broker.append(topic, value, key, headers, partition)
        if ack is None:
            ack = asyncio.get_running_loop().create_future()
            ack.set_result(None)
        return ack


def never_acknowledged(topic: str, value: bytes) -> asyncio.Future[None]:
    """An ack that never comes (a broker that stopped answering)."""
    return asyncio.get_running_loop().create_future()
