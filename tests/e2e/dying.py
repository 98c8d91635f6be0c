"""Service hooks that break the fetch loop once the service has started, as a bug would.

For `kourier run tests.e2e.app:app --hooks tests.e2e.dying:hooks`: the process must log
the error and exit non-zero rather than stay up as a zombie.
"""

from __future__ import annotations

from typing import Any


def _break_fetching(service: Any) -> None:
    group_consumer = service.consumer._consumer

    async def broken_fetch(max_records: int, timeout: float) -> list[Any]:
        raise RuntimeError("fetch broke (tests.e2e.dying)")

    group_consumer.fetch = broken_fetch


hooks = {"start": _break_fetching}
