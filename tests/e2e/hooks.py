"""Service hooks for `kourier run tests.e2e.app:app --hooks tests.e2e.hooks:hooks`.

Each event is one line, ``<pid> <event> <detail>``, appended to the file that
KOURIER_E2E_HOOKS_LOG names, so a test can see, across worker processes, which hooks ran.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def _recorder(name: str) -> Callable[[Any], None]:
    def record(event: Any) -> None:
        request = getattr(event, "request", None)
        detail = "" if request is None else f"{request.method} {request.target}"
        if name == "reply":
            detail += f" {event.status}"
        with open(os.environ["KOURIER_E2E_HOOKS_LOG"], "a") as log:
            log.write(f"{os.getpid()} {name} {detail}\n")

    return record


# one callable, or a list of them, per event: both forms `--hooks` accepts
hooks = {
    "start": _recorder("start"),
    "stop": [_recorder("stop")],
    "request": [_recorder("request")],
    "reply": [_recorder("reply")],
}
