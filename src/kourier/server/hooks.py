"""Messaging-level hooks of a service: plain lists of callables, as httpx's event hooks.

``Service(app, "orders", hooks={"reply": [record_latency]})``. A hook receives one event
object and may be sync or async. A hook that raises is logged and skipped: it must never
fail or stall the request it observes (keep hooks quick; they run inline).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kourier.errors import SettingsError
from kourier.protocol import Request
from kourier.transports.base import Record

logger = logging.getLogger("kourier.server")

HOOK_NAMES = ("start", "stop", "request", "reply", "error", "expired", "dead_letter")

Hook = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """A request about to run (``request``), or skipped past its deadline or cut when it
    passed while the handler ran (``expired``)."""

    service: str
    request: Request
    record: Record


@dataclass(frozen=True, slots=True)
class ReplyEvent:
    """A request has been handled; for two-way requests, every reply item was acked."""

    service: str
    request: Request
    record: Record
    status: int | None
    route: str | None
    duration: float
    items: int
    error_id: str | None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """The app raised while handling a request."""

    service: str
    request: Request
    record: Record
    error: BaseException
    error_id: str


@dataclass(frozen=True, slots=True)
class DeadLetterEvent:
    """A record went to the dead-letter topic."""

    service: str
    record: Record
    reason: str


class Hooks:
    """The hooks of one service, by name."""

    NAMES = HOOK_NAMES

    def __init__(self, hooks: Mapping[str, Hook | Sequence[Hook]] | None = None) -> None:
        self._hooks: dict[str, list[Hook]] = {name: [] for name in HOOK_NAMES}
        for name, functions in (hooks or {}).items():
            if callable(functions):
                functions = [functions]
            elif not isinstance(functions, list | tuple):
                raise SettingsError(f"hooks: {functions!r} for {name!r} is not callable")
            for function in functions:
                self.add(name, function)

    def add(self, name: str, function: Hook) -> None:
        """Run ``function`` on event ``name``, after the hooks already there."""
        if name not in self._hooks:
            raise SettingsError(
                f"hooks: {name!r} is not a hook; choose from {', '.join(HOOK_NAMES)}"
            )
        if not callable(function):
            raise SettingsError(f"hooks: {function!r} for {name!r} is not callable")
        self._hooks[name].append(function)

    def extend(self, other: Hooks) -> None:
        """Add ``other``'s hooks after these (``kourier run --hooks A --hooks B``)."""
        for name, functions in other._hooks.items():
            self._hooks[name].extend(functions)

    def has(self, name: str) -> bool:
        return bool(self._hooks[name])

    async def emit(self, name: str, event: object) -> None:
        for function in self._hooks[name]:
            try:
                result = function(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("%s hook %r failed", name, function)
