"""Cut a handler short: at its request's deadline, at its time limit, or on a cancel.

Every run of the app goes through a ``Cutoff``: a two-way request's run ends at the
request's deadline (``kourier-deadline``), a one-way message's attempt after
``message_timeout`` seconds, and either can be cut at once (``cut``) when its caller
cancels. Cutting cancels the code inside ``Cutoff.run`` only, so the app sees
``CancelledError`` where it awaits, and the service goes on to end the reply, retry or
dead-letter as for any failure (``HandlerCut``). ``RunningHandlers`` finds the runs of
a request id for the cancel reader, and remembers cancels that came before their request.

Only code that awaits can be cut: a handler that blocks the event loop, or one that
catches ``CancelledError`` and goes on, runs until it returns (and is then treated as
having finished). This module must never touch the broker or the ASGI messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable

from kourier import deadline
from kourier.protocol import Request, now_ms

logger = logging.getLogger("kourier.server")

#: Why a run was cut.
DEADLINE = "deadline"
TIME_LIMIT = "time limit"
CANCELLED = "cancelled"

#: A streamed reply may stall this much longer than its request's time at the start,
#: plus the grace, before the service cuts it: its caller's per-item timeout fires first.
STREAM_WINDOW_FACTOR = 1.1
STREAM_GRACE = 0.1

#: How long, and for how many ids, a cancel that came before its request is remembered.
CANCEL_MEMORY_SECONDS = 300.0
CANCEL_MEMORY_IDS = 10_000


class HandlerCut(Exception):
    """The app's run was cancelled: past its deadline or time limit, or by its caller."""

    def __init__(self, request_id: str, reason: str, seconds: float) -> None:
        self.request_id = request_id
        self.reason = reason
        self.seconds = seconds
        super().__init__(self.describe())

    @property
    def status(self) -> int:
        """The status of a reply that had not started: 504 past the deadline or time
        limit (nobody answered in time), 499 for a caller's cancel (nginx's "client
        closed request"; nobody reads it)."""
        return 499 if self.reason == CANCELLED else 504

    def describe(self) -> str:
        if self.reason == CANCELLED:
            return f"cancelled by its caller after {self.seconds:.3f} s"
        if self.reason == TIME_LIMIT:
            return f"timed out (time limit {self.seconds:g} s)"
        return f"ran past its deadline ({self.seconds:.3f} s)"


class Cutoff:
    """One run of the app, which ends at ``when`` (loop time; None: never) or on ``cut``."""

    __slots__ = (
        "_deadline_ms",
        "_handling",
        "_runs",
        "_started",
        "_timeout",
        "_window",
        "limit",
        "reason",
        "request_id",
        "when",
    )

    def __init__(
        self,
        request_id: str,
        when: float | None,
        reason: str,
        *,
        deadline_ms: int | None,
        limit: float | None = None,
        runs: RunningHandlers | None = None,
    ) -> None:
        self.request_id = request_id
        self.when = when
        #: Why the run ends at ``when``; ``cut`` replaces it.
        self.reason = reason
        #: The time limit in seconds, for the message of a one-way run.
        self.limit = limit
        self._deadline_ms = deadline_ms
        self._runs = runs
        self._timeout: asyncio.Timeout | None = None
        self._started = 0.0
        self._handling: deadline.Handling | None = None
        #: A streamed reply's allowance between two items (see ``item_sent``).
        self._window: float | None = None

    def cut(self, reason: str = CANCELLED) -> None:
        """End the run now (it may not have started yet: then it never starts)."""
        self.reason = reason
        self.when = asyncio.get_running_loop().time()
        if self._timeout is not None and not self._timeout.expired():
            self._timeout.reschedule(self.when)

    async def run(self, work: Awaitable[None]) -> None:
        """Await ``work``; raise ``HandlerCut`` if it was cut before it ended."""
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        if self.when is not None and self.when <= self._started:
            _close(work)
            raise HandlerCut(self.request_id, self.reason, 0.0)
        if self._runs is not None:
            self._runs.add(self)
        if self.when is not None and self.reason == DEADLINE:
            self._window = (self.when - self._started) * STREAM_WINDOW_FACTOR + STREAM_GRACE
        handling = self._handling = deadline.Handling(self.request_id, self._deadline_ms)
        token = deadline.bind(handling)
        timeout = self._timeout = asyncio.timeout_at(self.when)
        try:
            async with timeout:
                await work
        except Exception as exc:
            # Also an exception the app raised once cancelled (instead of letting the
            # cancellation through): the cut is what happened.
            if timeout.expired():
                raise self._cut() from exc
            raise
        finally:
            deadline.unbind(token)
            self._timeout = None
            if self._runs is not None:
                self._runs.discard(self)

    def item_sent(self) -> None:
        """A two-way reply is streaming and one more item went out: the run's end moves
        to one window from now. So a stream lives as long as it keeps producing and its
        caller keeps reading (a caller that stops reading, or times out waiting for an
        item, sends a cancel), as an HTTP stream under a read timeout does; one that
        stalls for longer than its caller would wait for an item is cut, with the error
        end marker. The window is the time the request had at the start, a little more,
        so the caller's own per-item timeout fires first and the cut is the backstop."""
        if self._window is None or self.reason != DEADLINE or self._timeout is None:
            return
        if self._timeout.expired():
            return
        loop = asyncio.get_running_loop()
        self.when = loop.time() + self._window
        self._timeout.reschedule(self.when)
        if self._handling is not None:
            self._handling.deadline_ms = now_ms() + int(self._window * 1000)

    def _cut(self) -> HandlerCut:
        took = asyncio.get_running_loop().time() - self._started
        if self.reason == TIME_LIMIT and self.limit is not None:
            took = self.limit
        return HandlerCut(self.request_id, self.reason, took)


class RunningHandlers:
    """The runs of this service instance by request id, for cancels to find.

    Several runs may share an id (without an idempotency gate a retry can overlap its
    first attempt): a cancel cuts them all. Every cancelled id is also kept for
    ``CANCEL_MEMORY_SECONDS`` (at most ``CANCEL_MEMORY_IDS`` ids), so a request that
    was still waiting in a backlog when its caller gave up, or a repeat of a cut one,
    is skipped when it comes.
    """

    def __init__(self, *, message_timeout: float) -> None:
        self.message_timeout = message_timeout
        self._runs: dict[str, list[Cutoff]] = {}
        self._cancelled: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(runs) for runs in self._runs.values())

    def cutoff(self, request: Request) -> Cutoff:
        """The cutoff of one run (one attempt) of ``request``, starting now."""
        loop = asyncio.get_running_loop()
        if request.reply_to is None:
            limit = self.message_timeout
            return Cutoff(
                request.id,
                loop.time() + limit,
                TIME_LIMIT,
                deadline_ms=now_ms() + int(limit * 1000),
                limit=limit,
            )
        when = None
        if request.deadline_ms is not None:
            when = loop.time() + (request.deadline_ms - now_ms()) / 1000
        return Cutoff(request.id, when, DEADLINE, deadline_ms=request.deadline_ms, runs=self)

    def cancel(self, request_id: str) -> int:
        """Cut every run of ``request_id`` and remember the id; how many runs were cut."""
        self._remember(request_id)
        runs = self._runs.get(request_id)
        if not runs:
            return 0
        for run in list(runs):
            run.cut(CANCELLED)
        return len(runs)

    def was_cancelled(self, request_id: str) -> bool:
        """True if a cancel for ``request_id`` has come (and is still kept)."""
        if not self._cancelled:
            return False
        at = self._cancelled.get(request_id)
        return at is not None and time.monotonic() - at < CANCEL_MEMORY_SECONDS

    def add(self, run: Cutoff) -> None:
        self._runs.setdefault(run.request_id, []).append(run)

    def discard(self, run: Cutoff) -> None:
        runs = self._runs.get(run.request_id)
        if runs is None:
            return
        if run in runs:
            runs.remove(run)
        if not runs:
            del self._runs[run.request_id]

    def _remember(self, request_id: str) -> None:
        now = time.monotonic()
        self._cancelled[request_id] = now
        self._cancelled.move_to_end(request_id)
        while self._cancelled:
            oldest, at = next(iter(self._cancelled.items()))
            if len(self._cancelled) <= CANCEL_MEMORY_IDS and now - at < CANCEL_MEMORY_SECONDS:
                break
            del self._cancelled[oldest]


def _close(work: Awaitable[None]) -> None:
    """Close a coroutine that will never run, so it is not reported as never awaited."""
    close = getattr(work, "close", None)
    if close is not None:
        close()
