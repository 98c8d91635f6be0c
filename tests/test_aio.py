"""The asyncio helpers: a cancellation is never lost, a task is never left running."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from kourier._aio import cancel_and_wait, within


async def cancelled_as_the_result_arrives(
    wrap: Callable[[Awaitable[int]], Coroutine[Any, Any, int]],
) -> bool:
    """Cancel a task in the same loop step as its awaited result lands: did it end?"""
    result: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(wrap(result))
    await asyncio.sleep(0)  # the task now waits on ``result``
    result.set_result(1)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


async def test_within_keeps_a_cancellation_that_meets_the_result() -> None:
    assert await cancelled_as_the_result_arrives(lambda aw: within(aw, 5))


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for was fixed in Python 3.12")
async def test_the_race_within_guards_against_is_real_for_wait_for() -> None:
    """The reason ``within`` exists: 3.11's ``wait_for`` eats this cancellation."""
    lost = not await cancelled_as_the_result_arrives(lambda aw: asyncio.wait_for(aw, 5))
    assert lost


async def test_within_times_out() -> None:
    with pytest.raises(TimeoutError):
        await within(asyncio.sleep(1), 0.01)


async def test_cancel_and_wait_cancels_again_a_task_that_ignores_one_cancellation() -> None:
    stubborn_rounds = 0

    async def stubborn() -> None:
        nonlocal stubborn_rounds
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                stubborn_rounds += 1
                if stubborn_rounds > 2:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await within(cancel_and_wait(task, None), 2)
    assert task.cancelled() and stubborn_rounds == 3


async def test_cancel_and_wait_raises_what_a_task_failed_with() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="boom"):
        await cancel_and_wait(task)
