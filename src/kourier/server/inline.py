"""Run many records in one task, each in its own context, as long as none of them waits.

Most one-way handlers finish without ever waiting (nothing to publish, nothing to
await that is not ready), so a task per record (created, scheduled, run, finished) was a
large share of the consume loop's cost per record. ``InlineRuns`` starts its items one
after another inside one task instead, each in a copy of the task's context, as a task
of its own would run it. The first item that waits keeps that task for the rest of its
run (so ``asyncio.current_task()``, the cancellation a cutoff or a drain sends, and
``asyncio.timeout`` all mean that one item from then on), and the items after it go on
in a new task. Items that never started because their task was cancelled first are
handed to ``abandoned``, so their owner can release them.

It knows nothing of records or Kafka; it must never run an item in a task that another
item is waiting in.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")

Run = Callable[[T], Coroutine[Any, Any, None]]


class InlineRuns(Generic[T]):
    """``run(item)`` for each of ``items``, in order, in as few tasks as they allow."""

    __slots__ = ("_abandoned", "_items", "_next", "_run", "_waiting", "task")

    def __init__(
        self,
        items: Sequence[T],
        run: Run[T],
        *,
        waiting: Callable[[T, asyncio.Task[None]], None],
        abandoned: Callable[[T], None],
    ) -> None:
        self._items = items
        self._run = run
        #: Called when an item waits: from then on ``task`` runs it alone.
        self._waiting = waiting
        self._abandoned = abandoned
        self._next = 0
        #: The task that runs the items not started yet.
        self.task = self._spawn()

    def _spawn(self) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._drive())
        task.add_done_callback(self._ended)
        return task

    async def _drive(self) -> None:
        items = self._items
        while self._next < len(items):
            item = items[self._next]
            self._next += 1
            context = contextvars.copy_context()
            coro = self._run(item)
            try:
                yielded = context.run(coro.send, None)
            except StopIteration:
                continue
            except BaseException:
                self._hand_on()
                raise
            # It waits: this task stays with it; the items after it get a task of their own.
            self._hand_on()
            task = asyncio.current_task()
            if task is not None:
                self._waiting(item, task)
            await _Resumed(coro, yielded, context)
            return

    def _hand_on(self) -> None:
        if self._next < len(self._items):
            self.task = self._spawn()

    def _ended(self, task: asyncio.Task[None]) -> None:
        # Only the task that owns the items not started yet may give them up: it ended
        # (cancelled before it ran them, by a drain) without starting them.
        if task is not self.task:
            return
        while self._next < len(self._items):
            item = self._items[self._next]
            self._next += 1
            self._abandoned(item)


class _Resumed:
    """Awaiting it runs the rest of a coroutine that has been started and waits on
    ``yielded``, in its context; what the task sends or throws goes on to it."""

    __slots__ = ("_context", "_coro", "_yielded")

    def __init__(
        self, coro: Coroutine[Any, Any, None], yielded: Any, context: contextvars.Context
    ) -> None:
        self._coro = coro
        self._yielded = yielded
        self._context = context

    def __await__(self) -> Generator[Any, Any, None]:
        coro, context, yielded = self._coro, self._context, self._yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # the task's cancellation, for the coroutine
                try:
                    yielded = context.run(coro.throw, exc)
                except StopIteration:
                    return
            else:
                try:
                    yielded = context.run(coro.send, sent)
                except StopIteration:
                    return
