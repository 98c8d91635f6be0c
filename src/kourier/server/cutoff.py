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
    """One run of the app, which ends at ``when`` (loop time; None: never) or on ``cut``.

    It cancels the run's task the way ``asyncio.timeout`` does (and counts its own
    cancellation off again with ``uncancel``, so a cancellation from elsewhere, a drain,
    still goes through), without a timeout object per run: a two-way run with a deadline
    has one timer, a one-way run none of its own (``RunningHandlers`` watches the time
    limits of all of them with one timer).
    """

    __slots__ = (
        "_cancelling",
        "_deadline_ms",
        "_expiring",
        "_handling",
        "_limits",
        "_runs",
        "_started",
        "_task",
        "_timer",
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
        limits: TimeLimits | None = None,
    ) -> None:
        self.request_id = request_id
        self.when = when
        #: Why the run ends at ``when``; ``cut`` replaces it.
        self.reason = reason
        #: The time limit in seconds, for the message of a one-way run.
        self.limit = limit
        self._deadline_ms = deadline_ms
        self._runs = runs
        self._limits = limits
        #: The task running the app, while it runs.
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        #: True once this cutoff has cancelled the run's task.
        self._expiring = False
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0
        self._handling: deadline.Handling | None = None
        #: A streamed reply's allowance between two items (see ``item_sent``).
        self._window: float | None = None

    def cut(self, reason: str = CANCELLED) -> None:
        """End the run now (it may not have started yet: then it never starts)."""
        self.reason = reason
        self.when = asyncio.get_running_loop().time()
        self._expire()

    async def run(self, work: Awaitable[None]) -> None:
        """Await ``work``; raise ``HandlerCut`` if it was cut before it ended."""
        loop = asyncio.get_running_loop()
        self._started = started = loop.time()
        when = self.when
        if when is not None and when <= started:
            _close(work)
            raise HandlerCut(self.request_id, self.reason, 0.0)
        task = asyncio.current_task()
        if task is None:
            _close(work)
            raise RuntimeError("a cutoff runs its work inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        runs = self._runs
        if runs is not None:
            runs.add(self)
            if when is not None:
                if self.reason == DEADLINE:
                    self._window = (when - started) * STREAM_WINDOW_FACTOR + STREAM_GRACE
                self._timer = loop.call_at(when, self._expire)
        limits = self._limits
        if limits is not None:
            limits.watch(self)
        handling = self._handling = deadline.Handling(self.request_id, self._deadline_ms)
        token = deadline.bind(handling)
        # As asyncio.timeout: a cancellation this cutoff made is taken back with
        # uncancel(), and the run ends as cut only if no other one (a drain's) is pending.
        try:
            await work
        except asyncio.CancelledError as exc:
            if self._expiring and task.uncancel() <= self._cancelling:
                raise self._cut() from exc
            raise
        except Exception as exc:
            # Also an exception the app raised once cancelled (instead of letting the
            # cancellation through): the cut is what happened.
            if self._expiring:
                task.uncancel()
                raise self._cut() from exc
            raise
        else:
            if self._expiring:  # cut, but it swallowed the cancellation and returned
                task.uncancel()
        finally:
            deadline.unbind(token)
            self._task = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if runs is not None:
                runs.discard(self)
            if limits is not None:
                limits.unwatch(self)

    def _expire(self) -> None:
        """Cancel the run's task, once, if it is running."""
        task = self._task
        if task is None or self._expiring:
            return
        self._expiring = True
        task.cancel()

    def item_sent(self) -> None:
        """A two-way reply is streaming and one more item went out: the run's end moves
        to one window from now. So a stream lives as long as it keeps producing and its
        caller keeps reading (a caller that stops reading, or times out waiting for an
        item, sends a cancel), as an HTTP stream under a read timeout does; one that
        stalls for longer than its caller would wait for an item is cut, with the error
        end marker. The window is the time the request had at the start, a little more,
        so the caller's own per-item timeout fires first and the cut is the backstop."""
        if self._window is None or self.reason != DEADLINE or self._timer is None:
            return
        if self._expiring:
            return
        loop = asyncio.get_running_loop()
        self.when = loop.time() + self._window
        self._timer.cancel()
        self._timer = loop.call_at(self.when, self._expire)
        if self._handling is not None:
            self._handling.deadline_ms = now_ms() + int(self._window * 1000)

    def _cut(self) -> HandlerCut:
        took = asyncio.get_running_loop().time() - self._started
        if self.reason == TIME_LIMIT and self.limit is not None:
            took = self.limit
        return HandlerCut(self.request_id, self.reason, took)


class TimeLimits:
    """Runs that share one time limit from their start, in the order they started, and
    one timer for all of them.

    With one limit for all, the oldest run is the next to expire: the timer is set for
    it, and when it fires the runs past their end are cut and the timer is set for the
    next. A run that ends only leaves the dict; no timer is scheduled or cancelled per
    run (one-way work, where a timer per message was a measurable share of its cost).
    """

    __slots__ = ("_runs", "_timer")

    def __init__(self) -> None:
        self._runs: dict[Cutoff, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._runs)

    def watch(self, run: Cutoff) -> None:
        self._runs[run] = None
        if self._timer is None and run.when is not None:
            self._timer = asyncio.get_running_loop().call_at(run.when, self._fire)

    def unwatch(self, run: Cutoff) -> None:
        self._runs.pop(run, None)

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._runs:
            run = next(iter(self._runs))
            if run.when is not None and run.when > now:
                self._timer = loop.call_at(run.when, self._fire)
                return
            del self._runs[run]
            run._expire()


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
        #: The time limits of one-way runs, all ``message_timeout`` from their start.
        self.limits = TimeLimits()

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
                limits=self.limits,
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
