"""Answer a repeated request with the recorded response instead of running it again.

A request is identified by its ``Idempotency-Key`` header if it has one, else by its
request id (which a caller's retry keeps). Within ``idempotency_window`` seconds, a
second request with the same identity gets the first one's reply items replayed to its
own reply address; if the first is still running, the second waits for it.

The default store lives in the service process. It covers retries and redeliveries
that reach the same instance; it does not cover a redelivery to another instance (after
a crash or a rebalance), nor a restart. A shared store (e.g. Redis) implements
``IdempotencyStore`` for that; see docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from kourier.protocol import Reply, Request

logger = logging.getLogger("kourier.server")


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a handled request produced: its reply items (empty for one-way work)."""

    items: tuple[Reply, ...]
    size: int


class IdempotencyStore(Protocol):
    """Where recorded responses live. Implementations must bound their own size."""

    async def get(self, key: str) -> Recorded | None: ...

    async def put(self, key: str, recorded: Recorded, ttl: float) -> None: ...


class MemoryIdempotencyStore:
    """An LRU of recorded responses, bounded in entries and bytes, expiring after the TTL.

    Each entry's reply items are kept serialised in one ``bytes`` object (``marshal`` of
    their fields; read back only for a repeat), not as ``Reply`` objects. The garbage
    collector does not track bytes, so a full store adds nothing to its collections. As
    objects, each entry was several tracked ones that lived long enough to count as
    long-lived, and at a few thousand requests a second a service ran a full collection
    of 40-60 ms every second, a pause that every call in flight waited through.
    """

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        # key -> (expiry on the monotonic clock, size as counted, marshalled items)
        self._entries: OrderedDict[str, tuple[float, int, bytes]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> Recorded | None:
        return self.get_now(key)

    async def put(self, key: str, recorded: Recorded, ttl: float) -> None:
        self.put_now(key, recorded, ttl)

    def get_now(self, key: str) -> Recorded | None:
        """``get`` without awaiting: ``Idempotency`` calls this store directly."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, size, items = entry
        if expires < time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return Recorded(
            tuple(
                Reply(request_id, seq, body, end, status, headers, error_id, responder)
                for (request_id, seq, body, end, status, headers, error_id, responder) in (
                    marshal.loads(items)
                )
            ),
            size,
        )

    def put_now(self, key: str, recorded: Recorded, ttl: float) -> None:
        """``put`` without awaiting: ``Idempotency`` calls this store directly."""
        if recorded.size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        if not recorded.items:
            items = _NO_ITEMS  # one-way work: the common case, and always the same bytes
        else:
            try:
                items = marshal.dumps([_fields(r) for r in recorded.items])
            except ValueError as exc:  # a field of a type marshal does not know
                logger.warning("the response to %s is not recorded: %s", key, exc)
                return
        self._entries[key] = (time.monotonic() + ttl, recorded.size, items)
        self._bytes += recorded.size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, size, _ = self._entries.pop(key)
        self._bytes -= size


_NO_ITEMS = marshal.dumps([])
#: What one-way work records: no reply items.
NOTHING = Recorded((), 0)


def _fields(r: Reply) -> tuple[object, ...]:
    return (r.request_id, r.seq, r.body, r.end, r.status, r.headers, r.error_id, r.responder)


def identity(request: Request) -> str:
    for name, value in request.headers:
        if name == b"idempotency-key" and value:
            return "key:" + value.decode("latin-1")[:200]
    return "id:" + request.id


class Idempotency:
    """Per-service gate: run a request once per identity within the window."""

    def __init__(self, store: IdempotencyStore, window: float) -> None:
        self.store = store
        self.window = window
        # A run in progress: None until a second delivery of it waits (no future before).
        self._running: dict[str, asyncio.Future[Recorded | None] | None] = {}
        # The default store is asked directly: two coroutines per request less.
        self._memory = store if type(store) is MemoryIdempotencyStore else None

    async def claim(self, key: str) -> Recorded | None:
        """The recorded response for ``key``, or None after claiming the right to run it.

        A run of the same identity in progress is waited for. The claim is made with no
        await between the last look and taking it, so two deliveries never both run.
        """
        while True:
            if key in self._running:
                running = self._running[key]
                if running is None:
                    running = asyncio.get_running_loop().create_future()
                    self._running[key] = running
                recorded = await asyncio.shield(running)
                if recorded is not None:
                    return recorded
                continue  # that run failed: look again, and maybe run it ourselves
            memory = self._memory
            recorded = memory.get_now(key) if memory is not None else await self.store.get(key)
            if recorded is not None:
                return recorded
            if key not in self._running:
                self._running[key] = None
                return None

    async def finish(self, key: str, items: list[Reply] | None) -> None:
        """Record the outcome (``None``: nothing to record, e.g. the handler failed)."""
        recorded = None
        try:
            if items is not None:
                if items:
                    recorded = Recorded(tuple(items), sum(len(i.body) for i in items))
                else:
                    recorded = NOTHING
                memory = self._memory
                if memory is not None:
                    memory.put_now(key, recorded, self.window)
                else:
                    # Still marked as running while a shared store takes it, so a
                    # duplicate arriving meanwhile waits instead of finding neither.
                    await self.store.put(key, recorded, self.window)
        finally:
            future = self._running.pop(key, None)
            if future is not None and not future.done():
                future.set_result(recorded)
