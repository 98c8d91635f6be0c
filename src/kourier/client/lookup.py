"""Before a call goes out: does its service exist, and is an instance of it live?

HTTP fails at once for a misspelt host or a server that is down; over Kafka a request
to a topic nobody reads would just wait for its whole timeout. ``ServiceLookup``
answers both questions from what is cheap to know: the service's request topic (asked
of the broker once per service, then remembered) and the registry (``Directory``, read
once per client, then followed).

- No request topic: ``ServiceNotFound``, naming the closest known names.
- A two-way call and no live instance: ``ServiceUnavailable`` at once, or after waiting
  up to ``wait_for_instance`` seconds (within the call's deadline) for one to come.
  An instance whose heartbeat is late but not long gone (a broker outage stops every
  heartbeat) is waited for up to one heartbeat interval first.
- A one-way send needs only the topic: the request waits in it for an instance.

It must never create a topic (services and ``kourier topics ensure`` do) and never
cost a broker round trip once a service's topic is known to exist.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import time

from kourier.errors import ServiceNotFound, ServiceUnavailable
from kourier.registry import Directory, ServiceInfo
from kourier.settings import Settings
from kourier.transports.base import Transport

logger = logging.getLogger("kourier.client")

REQUESTS_SUFFIX = ".requests"
#: Seconds a first read of the registry behind "did you mean" may take before the error
#: goes out without its suggestions.
SUGGESTION_BUDGET = 0.25


class ServiceLookup:
    """One client's knowledge of which services exist and which have live instances."""

    def __init__(self, transport: Transport, settings: Settings) -> None:
        self._transport = transport
        self._settings = settings
        self.directory = Directory(transport, settings)
        self._known_topics: set[str] = set()

    async def stop(self) -> None:
        await self.directory.stop()

    def knows(self, topic: str) -> bool:
        """True if ``topic`` was found before: ``require_topic`` would pass at once."""
        return topic in self._known_topics

    def reachable(self, service: str, topic: str) -> bool:
        """True if both checks are known to pass without a wait: the topic was found
        and (for a service) an instance is live. False means: run them."""
        return topic in self._known_topics and ("." in service or self.directory.has_live(service))

    async def require_topic(self, topic: str) -> None:
        """``ServiceNotFound`` unless ``topic`` (a service's request topic, or a shared
        topic) exists."""
        if topic in self._known_topics:
            return
        if topic not in await self._transport.describe_topics([topic]):
            raise ServiceNotFound(await self._not_found(topic))
        self._known_topics.add(topic)

    async def require_live(self, service: str, deadline: float) -> None:
        """``ServiceUnavailable`` unless an instance of ``service`` is live, waiting for
        one up to ``wait_for_instance`` seconds but not past ``deadline`` (loop time)."""
        directory = self.directory
        if directory.has_live(service):
            return
        await directory.ready()
        if directory.has_live(service):
            return
        wait = max(self._settings.wait_for_instance, directory.stale_grace(service))
        wait = min(wait, deadline - _loop_time())
        if wait > 0:
            logger.info("no live instance of %r: waiting up to %.1f s for one", service, wait)
            if await directory.wait_for_live(service, wait):
                return
        raise ServiceUnavailable(self._unavailable(service, directory.service(service), wait))

    async def is_live(self, service: str) -> bool:
        """Whether an instance of ``service`` is live now (the registry read first)."""
        await self.directory.ready()
        return self.directory.has_live(service)

    async def _not_found(self, topic: str) -> str:
        service = self._service_of(topic)
        if service is None:  # a shared topic (scatter-gather), not a service's
            return f"no topic {topic!r}: the services that consume it create it when they start"
        known = await self._known_names()
        close = difflib.get_close_matches(service, sorted(known), n=3, cutoff=0.6)
        message = f"no service {service!r}"
        if close:
            message += "; did you mean " + " or ".join(repr(name) for name in close) + "?"
        return (
            f"{message} (its request topic {topic} does not exist: a service creates it when "
            f"it starts, or run 'kourier topics ensure {service}')"
        )

    async def _known_names(self) -> set[str]:
        """Service names to suggest: those in the registry (every service that ran
        announced itself there) and those whose request topic this client has seen.

        Not a listing of every topic: on a cluster of a few thousand topics that took a
        second (and held up the client's next metadata request behind it), which is no
        way to report a typo. The registry read is waited for at most
        ``SUGGESTION_BUDGET``; it goes on in the background if it takes longer."""
        reading = asyncio.ensure_future(self.directory.ready())
        done, _ = await asyncio.wait({reading}, timeout=SUGGESTION_BUDGET)
        if reading in done and reading.exception() is not None:
            logger.debug("no registry names to suggest: %r", reading.exception())
        elif reading not in done:
            reading.add_done_callback(_retrieve)
        seen = {name for t in self._known_topics if (name := self._service_of(t)) is not None}
        return seen | self.directory.names()

    def _service_of(self, topic: str) -> str | None:
        """The service whose request topic ``topic`` is, or None."""
        prefix = self._settings.topic_prefix
        if topic.startswith(prefix) and topic.endswith(REQUESTS_SUFFIX):
            service = topic[len(prefix) : -len(REQUESTS_SUFFIX)]
            if "." not in service:
                return service
        return None

    def _unavailable(self, service: str, info: ServiceInfo | None, waited: float) -> str:
        if info is None:
            why = "no instance of it is in the registry: none started, or all stopped"
        else:
            newest = max(info.instances, key=lambda i: i.heartbeat_at)
            why = (
                f"the last heartbeat of its {len(info.instances)} instance(s) was "
                f"{time.time() - newest.heartbeat_at:.0f} s ago"
            )
        waited_text = f" after waiting {waited:.1f} s" if waited > 0 else ""
        return (
            f"no live instance of service {service!r}{waited_text} ({why}); start one with "
            "'kourier run', or set wait_for_instance (KOURIER_WAIT_FOR_INSTANCE) to wait "
            "for one during restarts"
        )


def _retrieve(task: asyncio.Future[bool]) -> None:
    """Retrieve a background registry read's outcome (its failure is logged by the
    directory; unretrieved, asyncio would report it again at exit)."""
    if not task.cancelled():
        task.exception()


def _loop_time() -> float:
    return asyncio.get_running_loop().time()
