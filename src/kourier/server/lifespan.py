"""Run an ASGI app's lifespan protocol: startup before serving, shutdown after.

An app that does not speak lifespan (it raises on the lifespan scope before answering)
is served without it, as uvicorn's ``--lifespan auto`` does. A startup failure stops
the service from starting.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kourier._aio import cancel_and_wait, within
from kourier.server.asgi import ASGIApp, Message

logger = logging.getLogger("kourier.server")


class LifespanFailed(RuntimeError):
    """The app reported ``lifespan.startup.failed`` or ``lifespan.shutdown.failed``."""


class Lifespan:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.supported = True

    async def _main(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "state": self.state,
        }
        try:
            await self._app(scope, self._inbox.get, self._outbox.put)
        except Exception as exc:
            await self._outbox.put({"type": "kourier.lifespan.error", "error": exc})
        else:
            # Returning without a word (``if scope["type"] != "http": return``) is how
            # many bare apps say they do not speak lifespan.
            await self._outbox.put({"type": "kourier.lifespan.returned"})

    async def startup(self, timeout: float = 60.0) -> None:
        self._task = asyncio.create_task(self._main(), name="kourier-lifespan")
        await self._inbox.put({"type": "lifespan.startup"})
        message = await within(self._outbox.get(), timeout)
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            return
        if kind == "lifespan.startup.failed":
            raise LifespanFailed(f"app startup failed: {message.get('message', '')}")
        # The app raised or returned before answering: it does not speak lifespan.
        self.supported = False
        reason = message.get("error") or "it returned on the lifespan scope"
        logger.info("app does not support the ASGI lifespan protocol (%s)", reason)

    async def shutdown(self, timeout: float = 30.0) -> None:
        if self._task is None:
            return
        if self.supported and not self._task.done():
            await self._inbox.put({"type": "lifespan.shutdown"})
            try:
                message = await within(self._outbox.get(), timeout)
            except TimeoutError:
                logger.warning("app shutdown did not finish within %.0f s", timeout)
            else:
                if message["type"] == "lifespan.shutdown.failed":
                    logger.error("app shutdown failed: %s", message.get("message", ""))
                elif message["type"] == "kourier.lifespan.error":
                    logger.error("app shutdown raised: %r", message.get("error"))
        await cancel_and_wait(self._task)
        self._task = None
