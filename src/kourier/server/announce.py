"""Announce a service instance in the registry: register, heartbeat, withdraw.

``Announcer`` publishes the instance's registration (docs/protocol.md, "Service
registry") when the service starts, again every ``heartbeat_interval`` seconds, and a
tombstone when it stops cleanly; an instance killed without a stop ages out by its
heartbeat. ``serve.py`` starts and stops it; nothing else does.

It must never fail quietly: a heartbeat the broker refuses is logged and counted, and a
heartbeat task that dies is logged as an error and counted (``failures``), and shows as
not ``running``. It never holds up the service's work: heartbeats run in their own task.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import socket
import time
from typing import Any

from kourier._aio import cancel_and_wait, within
from kourier.errors import KourierError
from kourier.registry import LIVE_INTERVALS, InstanceInfo, encode, instance_key, registry_topic_spec
from kourier.settings import Settings
from kourier.transports.base import Transport

logger = logging.getLogger("kourier.server")

#: Seconds before trying again after a heartbeat the broker did not take.
RETRY_AFTER_FAILURE = 1.0
#: Seconds a stopping instance waits for the broker to take its tombstone, at most.
WITHDRAW_TIMEOUT = 5.0
#: HTTP methods an OpenAPI path item may hold (its other keys are not operations).
_OPENAPI_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class Announcer:
    """Keeps one service instance's registration in the registry while it runs."""

    def __init__(self, transport: Transport, settings: Settings, service: str, app: Any) -> None:
        self._transport = transport
        self._settings = settings
        self._service = service
        self._app = app
        self.instance_id = secrets.token_hex(8)
        self._topic = registry_topic_spec(settings)
        self._info: InstanceInfo | None = None
        self.task: asyncio.Task[None] | None = None
        #: Registrations (the first and each heartbeat) the broker acknowledged.
        self.heartbeats = 0
        #: Heartbeats the broker did not take, plus a heartbeat task that died.
        self.failures = 0

    @property
    def running(self) -> bool:
        """True while the heartbeat task is alive."""
        return self.task is not None and not self.task.done()

    @property
    def info(self) -> InstanceInfo | None:
        """The registration last published (None before start)."""
        return self._info

    async def start(self) -> None:
        """Publish the first registration (its ack awaited: a service nobody can find
        does not start), then heartbeat in the background."""
        from kourier import __version__

        if self._settings.create_topics:
            await self._transport.ensure_topics([self._topic])
        now = time.time()
        self._info = InstanceInfo(
            service=self._service,
            instance_id=self.instance_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            kourier_version=__version__,
            app_version=app_version(self._app),
            routes=app_routes(self._app),
            started_at=now,
            heartbeat_at=now,
            heartbeat_interval=self._settings.heartbeat_interval,
        )
        await self._publish(self._info)
        self.task = asyncio.create_task(self._beat(), name="kourier-heartbeat")
        self.task.add_done_callback(self._ended)
        logger.info(
            "announced %s instance %s in %s", self._service, self.instance_id, self._topic.name
        )

    async def stop(self) -> None:
        """Stop the heartbeat and withdraw (tombstone), so callers see the instance go."""
        task, self.task = self.task, None
        if task is None:
            return
        if not task.done():
            await cancel_and_wait(task)
        key = instance_key(self._service, self.instance_id)
        try:
            ack = await self._transport.publish(self._topic.name, None, key=key)
            # Bounded: a stop during a broker outage must not wait long for this.
            await within(ack, min(self._settings.heartbeat_interval, WITHDRAW_TIMEOUT))
        except (KourierError, TimeoutError) as exc:
            self.failures += 1
            logger.warning(
                "could not withdraw %s instance %s from the registry (%s); it ages out "
                "after %d missed heartbeats",
                self._service,
                self.instance_id,
                exc,
                LIVE_INTERVALS,
            )
            return
        logger.info("withdrew %s instance %s from the registry", self._service, self.instance_id)

    async def _beat(self) -> None:
        interval = self._settings.heartbeat_interval
        pause = interval
        while True:
            await asyncio.sleep(pause)
            assert self._info is not None
            info = dataclasses.replace(self._info, heartbeat_at=time.time())
            try:
                await within(self._publish(info), interval)
            except (KourierError, TimeoutError) as exc:
                self.failures += 1
                logger.warning(
                    "heartbeat of %s instance %s not acknowledged: %s",
                    self._service,
                    self.instance_id,
                    exc or "no answer in time",
                )
                # Soon again, not a whole interval later: after a broker outage every
                # registration is stale, and callers wait for the first new heartbeat.
                pause = min(interval, RETRY_AFTER_FAILURE)
                continue
            self._info = info
            pause = interval

    async def _publish(self, info: InstanceInfo) -> None:
        key, value = encode(info)
        await (await self._transport.publish(self._topic.name, value, key=key))
        self.heartbeats += 1

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        self.failures += 1
        logger.error(
            "the registry heartbeat of %s instance %s stopped: %r; callers will stop "
            "seeing this instance as live",
            self._service,
            self.instance_id,
            task.exception(),
        )


def app_version(app: Any) -> str | None:
    """The app's own version (FastAPI and Starlette apps may set ``version``), or None."""
    version = getattr(app, "version", None)
    return version if isinstance(version, str) else None


def app_routes(app: Any) -> tuple[tuple[str, str], ...]:
    """``(METHOD, path)`` of each operation in the app's OpenAPI document, if it has one."""
    openapi = getattr(app, "openapi", None)
    if not callable(openapi):
        return ()
    try:
        document = openapi()
        paths = document.get("paths") or {}
        return tuple(
            (method.upper(), str(path))
            for path, item in paths.items()
            for method in item
            if method in _OPENAPI_METHODS
        )
    except Exception as exc:
        # An app whose schema cannot be built still serves: announce it without routes.
        logger.warning("could not read the app's OpenAPI routes: %r", exc)
        return ()
