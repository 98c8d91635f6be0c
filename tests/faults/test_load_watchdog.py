"""The fault tests' load process reports a hang instead of sitting in it."""

from __future__ import annotations

import subprocess
import sys

from tests.processes import ROOT

STUCK = """
import asyncio
from tests.faults.load import watchdog

async def waits_forever() -> None:
    await asyncio.Event().wait()

async def main() -> None:
    watchdog(asyncio.get_running_loop(), 0.3)
    await asyncio.gather(waits_forever(), waits_forever())

asyncio.run(main())
"""


def test_a_stuck_load_writes_its_threads_and_tasks_and_exits_3() -> None:
    done = subprocess.run(
        [sys.executable, "-c", STUCK], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 3, done.stderr
    assert "stuck: not done 0 s after ready" in done.stderr
    assert "Thread" in done.stderr  # faulthandler's dump of every thread
    assert "3 tasks pending" in done.stderr  # main and the two it gathers
    assert "in waits_forever" in done.stderr  # each task's stack
