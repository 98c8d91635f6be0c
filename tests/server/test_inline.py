"""InlineRuns: items in one task while none waits; a waiting item keeps its task."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from kourier.server.inline import InlineRuns

seen_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("seen", default=None)


def _ignore(item: object, task: asyncio.Task[None]) -> None:
    pass


def _never(item: object) -> None:
    raise AssertionError(f"{item} was abandoned")


async def test_items_that_do_not_wait_share_one_task_in_order_each_in_its_own_context() -> None:
    """Items that finish without waiting run in order in one task, and a context
    variable one item sets is not seen by the next (each runs in a copy of the context)."""
    ran: list[tuple[int, asyncio.Task[None] | None, str | None]] = []

    async def run(item: int) -> None:
        ran.append((item, asyncio.current_task(), seen_var.get()))
        seen_var.set(f"set by {item}")

    runs = InlineRuns([1, 2, 3], run, waiting=_ignore, abandoned=_never)
    await runs.task
    assert [item for item, _, _ in ran] == [1, 2, 3]
    assert {task for _, task, _ in ran} == {runs.task}
    assert [seen for _, _, seen in ran] == [None, None, None]
    assert seen_var.get() is None


async def test_an_item_that_waits_keeps_its_task_and_the_rest_go_on_without_it() -> None:
    """The first item that waits stays in its task through every await (so
    current_task() is the same), and the items after it run meanwhile in another task."""
    release = asyncio.Event()
    tasks_of_slow: list[asyncio.Task[None] | None] = []
    events: list[str] = []
    waited: list[tuple[str, asyncio.Task[None]]] = []

    async def run(item: str) -> None:
        if item == "slow":
            tasks_of_slow.append(asyncio.current_task())
            await release.wait()
            tasks_of_slow.append(asyncio.current_task())
        events.append(item)

    runs = InlineRuns(
        ["fast", "slow", "after"],
        run,
        waiting=lambda item, task: waited.append((item, task)),
        abandoned=_never,
    )
    first = runs.task
    await asyncio.sleep(0.01)
    assert events == ["fast", "after"]
    assert runs.task is not first
    release.set()
    await first
    assert events == ["fast", "after", "slow"]
    assert tasks_of_slow == [first, first]
    assert waited == [("slow", first)]


async def test_items_whose_task_is_cancelled_before_it_starts_are_abandoned() -> None:
    """A task cancelled before it ran hands every item it had not started to
    ``abandoned``, so the owner can release them."""
    abandoned: list[int] = []

    async def run(item: int) -> None:
        raise AssertionError("never runs")

    runs = InlineRuns([1, 2], run, waiting=_ignore, abandoned=abandoned.append)
    runs.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runs.task
    await asyncio.sleep(0)  # done callbacks run in the next turn
    assert abandoned == [1, 2]


async def test_cancelling_a_waiting_items_task_cancels_that_item_only() -> None:
    """Cancelling the task an item waits in raises CancelledError in that item, and the
    items handed on to another task still run."""
    outcomes: list[str] = []

    async def run(item: str) -> None:
        if item == "stuck":
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                outcomes.append("stuck cancelled")
                raise
        else:
            await asyncio.sleep(0.01)
            outcomes.append(f"{item} done")

    runs = InlineRuns(["stuck", "next"], run, waiting=_ignore, abandoned=_never)
    stuck_task = runs.task
    await asyncio.sleep(0)
    stuck_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck_task
    await runs.task
    assert outcomes == ["stuck cancelled", "next done"]
