"""bench/caller.py in miniature, without a broker, so that it cannot rot unnoticed.

Its in-process mode runs the native client and httpx over ``KourierTransport`` against
an instant replier, then httpx alone; the figures are checked for sanity, never for a
target.
"""

from __future__ import annotations

import math

from bench.caller import in_process


async def test_the_in_process_caller_bench_measures_each_side() -> None:
    """Each round of each side, and httpx alone after each httpx round, gives a positive
    CPU time per call; the two kourier sides also give a rate."""
    results = await in_process(calls=20, rounds=1)
    assert [r.side for r in results] == ["native", "httpx", "httpx alone"]
    assert all(r.caller_us > 0 for r in results)
    assert all(r.rate > 0 for r in results[:2]) and math.isnan(results[2].rate)
