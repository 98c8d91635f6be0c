"""Request records refused before the app runs, and why.

A request that decoded can still be one the app must not run for: its reply address
cannot be answered (``server/reply_addresses.py``), or its body is over the service's
``max_request_bytes`` (a caller with a larger limit, or a raw producer). ``Refusals``
says which and why; the service dead-letters the record with that reason, counts it
under ``Refusal.why`` and answers the caller when it can. docs/reliability.md lists
these paths with the others on which a record is committed without the app's handling.

It decides only; it never publishes, logs or counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from kourier.protocol import ReplyAddress, Request
from kourier.server.reply_addresses import ReplyAddresses
from kourier.transports.base import Transport


@dataclass(frozen=True, slots=True)
class Refusal:
    #: The counter it goes under: a ``ServiceStats`` field and a ``kourier_refused`` label.
    why: str
    #: The dead letter's reason header.
    reason: str
    #: The status to answer the caller with, if there is a reply address to answer on.
    status: int | None = None


class Refusals:
    """The checks a decoded request passes before the app runs."""

    def __init__(self, transport: Transport, max_request_bytes: int) -> None:
        self._addresses = ReplyAddresses(transport)
        self._max_request_bytes = max_request_bytes

    def clear_at_once(self, request: Request) -> bool:
        """True if ``request`` may reach the app with nothing to look up: one-way (no
        reply address) and within the size limit. Saves ``of`` for one-way work."""
        return request.reply_to is None and len(request.body) <= self._max_request_bytes

    async def of(self, request: Request) -> Refusal | None:
        """Why ``request`` must not reach the app, or None if it may."""
        if request.reply_to is not None:
            problem = await self._addresses.problem(request.reply_to)
            if problem is not None:
                return Refusal("bad_reply_address", f"bad reply address: {problem}")
        size, limit = len(request.body), self._max_request_bytes
        if size > limit:
            reason = f"request body of {size} bytes is over max_request_bytes ({limit})"
            return Refusal("too_large", reason, 413)
        return None

    async def can_answer(self, address: ReplyAddress) -> bool:
        """True if replies to ``address`` can be sent (or the broker cannot tell now)."""
        return await self._addresses.problem(address) is None
