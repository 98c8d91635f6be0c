"""Caller-side hooks: plain lists of callables, as httpx's ``event_hooks``.

``Client(settings, hooks={"request": [add_auth], "response": [check_status]})``.

- A ``request`` hook gets the ``protocol.Request`` of a call (``request``, ``stream``,
  ``send``, ``gather``) before it is validated and published, once per call (not per
  retry attempt). It may change it: add a header (``request.headers.append((b"x-tenant",
  b"acme"))``; headers are ``list[tuple[bytes, bytes]]``), set the key or the body. The
  request is validated after the hooks ran, so a hook cannot slip a reserved
  ``kourier-`` header or an oversize body past the checks.
- A ``response`` hook gets the ``Response`` of ``request``, the ``ReplyStream`` of
  ``stream`` once item 0 has arrived, and each ``Response`` of ``gather``. ``send`` has
  no response.

A hook may be sync or async; hooks run in list order, inline. Unlike a service's hooks,
an exception in a caller's hook is not caught: it propagates to the caller, who
should see a bug in their own code, and the call ends there (nothing is published when
a request hook raises).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kourier.errors import SettingsError

HOOK_NAMES = ("request", "response")

Hook = Callable[[Any], Any]


class CallerHooks:
    """The hooks of one client, by name."""

    def __init__(self, hooks: Mapping[str, Sequence[Hook]] | None = None) -> None:
        self._hooks: dict[str, list[Hook]] = {name: [] for name in HOOK_NAMES}
        for name, functions in (hooks or {}).items():
            if callable(functions) or not isinstance(functions, Sequence):
                raise SettingsError(f"hooks: give {name!r} a list of callables")
            for function in functions:
                self.add(name, function)

    def add(self, name: str, function: Hook) -> None:
        if name not in self._hooks:
            raise SettingsError(
                f"hooks: {name!r} is not a caller hook; choose from {', '.join(HOOK_NAMES)}"
            )
        if not callable(function):
            raise SettingsError(f"hooks: {function!r} for {name!r} is not callable")
        self._hooks[name].append(function)

    def has(self, name: str) -> bool:
        """True if any hook is registered for ``name`` (a call skips emitting if not)."""
        return bool(self._hooks[name])

    async def emit(self, name: str, subject: object) -> None:
        for function in self._hooks[name]:
            result = function(subject)
            if inspect.isawaitable(result):
                await result
