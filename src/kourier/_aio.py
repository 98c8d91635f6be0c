"""Small asyncio helpers shared across the package."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

logger = logging.getLogger("kourier.server")


class DeathWatch:
    """The first error one of a consumer's background loops died of.

    A loop that ends before ``stopping`` is set is dead, whatever it returned: its
    error goes into ``failure``, is logged, and ``failed`` is set at once, so health
    turns red and ``serve`` stops the process instead of keeping a zombie.
    """

    def __init__(self, stopping: asyncio.Event) -> None:
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        self._stopping = stopping

    def watch(self, *tasks: asyncio.Task[Any]) -> None:
        for task in tasks:
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self._stopping.is_set():
            return
        error = task.exception() or RuntimeError(f"{task.get_name()} returned")
        if self.failure is None:
            self.failure = error
        logger.critical(
            "the %s task died: this instance stops consuming", task.get_name(), exc_info=error
        )
        self.failed.set()


async def within(awaitable: Awaitable[T], timeout: float) -> T:
    """Await ``awaitable`` for at most ``timeout`` seconds, else raise ``TimeoutError``.

    Use this, not ``asyncio.wait_for``: on Python 3.11 ``wait_for`` swallows a
    cancellation that arrives in the same loop step as the inner result, so a task
    cancelled at that moment carries on as if nothing happened (a periodic loop then
    never stops and whoever awaits it hangs). ``asyncio.timeout`` keeps the
    cancellation and needs no extra task.
    """
    async with asyncio.timeout(timeout):
        return await awaitable


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the tasks and wait until each has really ended.

    A task may swallow one cancellation (a library awaiting ``asyncio.wait_for`` on
    Python 3.11 does, when the cancellation meets a result), so cancel again until it
    ends. ``asyncio.wait`` rather than ``await``: a cancellation of the caller itself
    must not be eaten. The first exception (other than the cancellation) a task ended
    with is raised, as ``await task`` would have.
    """
    owned = [task for task in tasks if task is not None]
    pending = {task for task in owned if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    errors = [task.exception() for task in owned if not task.cancelled()]
    first = next((error for error in errors if error is not None), None)
    if first is not None:
        raise first
