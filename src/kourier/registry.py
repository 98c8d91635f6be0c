"""The service registry: which services run, where, and whether they are live.

Every service instance announces itself on the compacted ``<prefix>registry`` topic
(``server/announce.py`` writes; docs/protocol.md, "Service registry", is the format).
This module holds the record format (``encode``, ``decode``), what callers see of it
(``ServiceInfo``, ``InstanceInfo``) and the ``Directory``: one reader per caller that
reads the topic from its beginning, then follows it, so that a lookup costs a dict
access.

It must never write a record to the registry (a caller allowed to create topics may
create the topic), and never stop reading because of a record: one that breaks the
format is logged with its position, counted and skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from kourier._aio import cancel_and_wait
from kourier.errors import BrokerError, ProtocolError
from kourier.settings import Settings, check_service_name
from kourier.transports.base import PartitionReader, Record, TopicSpec, Transport

logger = logging.getLogger("kourier.registry")

#: The registration format this version writes and reads.
FORMAT = 1
#: An instance is live while its last heartbeat is at most this many intervals old.
LIVE_INTERVALS = 3
#: How long a first lookup waits for the reader to reach the registry's end, at most.
CATCH_UP_TIMEOUT = 3.0
#: Seconds between looks for a registry topic that does not exist yet.
ABSENT_RETRY = 1.0
#: Seconds before reading again after the broker failed a fetch.
FETCH_RETRY = 0.5
#: Old heartbeats are compacted away within this (``segment.ms``: only closed segments
#: are compacted).
SEGMENT_MS = 3_600_000

T = TypeVar("T")

_INSTANCE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """One running (or lately running) instance of a service, as it announced itself."""

    service: str
    instance_id: str
    host: str
    pid: int
    kourier_version: str
    app_version: str | None
    routes: tuple[tuple[str, str], ...]
    started_at: float
    heartbeat_at: float
    heartbeat_interval: float

    @property
    def live(self) -> bool:
        """Whether its last heartbeat is recent enough (at most 3 intervals old)."""
        return self.live_at(time.time())

    def live_at(self, now: float) -> bool:
        """Whether it counts as live at ``now`` (seconds since the epoch)."""
        return now - self.heartbeat_at <= LIVE_INTERVALS * self.heartbeat_interval

    @property
    def key(self) -> str:
        return f"{self.service}/{self.instance_id}"


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """A service the registry knows, with every instance it holds (live or not)."""

    name: str
    instances: tuple[InstanceInfo, ...]

    @property
    def live(self) -> tuple[InstanceInfo, ...]:
        """The instances whose heartbeat is recent enough."""
        now = time.time()
        return tuple(i for i in self.instances if i.live_at(now))


# -- the record format -----------------------------------------------------------------


def registry_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}registry"


def registry_topic_spec(settings: Settings) -> TopicSpec:
    """The registry topic as services and ``kourier topics ensure`` create it."""
    return TopicSpec(
        registry_topic(settings),
        1,
        settings.replication_factor,
        config={"cleanup.policy": "compact", "segment.ms": str(SEGMENT_MS)},
    )


def check_instance_id(instance_id: str) -> str:
    if not isinstance(instance_id, str) or not _INSTANCE_ID.match(instance_id):
        raise ProtocolError(f"instance id {instance_id[:70]!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    return instance_id


def instance_key(service: str, instance_id: str) -> bytes:
    return f"{service}/{instance_id}".encode()


def encode(info: InstanceInfo) -> tuple[bytes, bytes]:
    """The key and value of ``info``'s registration record."""
    value = {
        "format": FORMAT,
        "service": info.service,
        "instance": info.instance_id,
        "host": info.host,
        "pid": info.pid,
        "kourier_version": info.kourier_version,
        "app_version": info.app_version,
        "routes": [list(route) for route in info.routes],
        "started_at": info.started_at,
        "heartbeat_at": info.heartbeat_at,
        "heartbeat_interval": info.heartbeat_interval,
    }
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return instance_key(info.service, info.instance_id), body


def decode(key: bytes | None, value: bytes | None) -> tuple[str, InstanceInfo | None]:
    """The record's key and its registration (``None`` for a tombstone).

    ``ProtocolError`` says what is wrong with a record that breaks the format.
    """
    if key is None:
        raise ProtocolError("registry record without a key")
    try:
        text = key.decode()
    except UnicodeDecodeError:
        raise ProtocolError("registry key is not UTF-8") from None
    service, sep, instance_id = text.partition("/")
    if not sep:
        raise ProtocolError(f"registry key {text[:80]!r} is not <service>/<instance id>")
    try:
        check_service_name(service)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    check_instance_id(instance_id)
    if value is None:
        return text, None
    try:
        fields = json.loads(value)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"registry value of {text!r} is not JSON: {exc!r:.200}") from None
    if not isinstance(fields, dict):
        raise ProtocolError(f"registry value of {text!r} is not a JSON object")
    if type(fields.get("format")) is not int or fields["format"] != FORMAT:
        raise ProtocolError(f"registry value of {text!r} has format {fields.get('format')!r}")
    if fields.get("service") != service or fields.get("instance") != instance_id:
        raise ProtocolError(f"registry value of {text!r} names another service or instance")
    return text, InstanceInfo(
        service=service,
        instance_id=instance_id,
        host=_field(fields, "host", str),
        pid=_field(fields, "pid", int),
        kourier_version=_field(fields, "kourier_version", str),
        app_version=_optional_str(fields, "app_version"),
        routes=_routes(fields.get("routes")),
        started_at=_seconds(fields, "started_at"),
        heartbeat_at=_seconds(fields, "heartbeat_at"),
        heartbeat_interval=_interval(fields),
    )


def _field(fields: dict[str, object], name: str, kind: type[T]) -> T:
    value = fields.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"registry field {name!r} must be a {kind.__name__}")
    return value


def _optional_str(fields: dict[str, object], name: str) -> str | None:
    value = fields.get(name)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"registry field {name!r} must be a string or null")
    return value


def _seconds(fields: dict[str, object], name: str) -> float:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f"registry field {name!r} must be a number of seconds")
    return float(value)


def _interval(fields: dict[str, object]) -> float:
    interval = _seconds(fields, "heartbeat_interval")
    if interval <= 0:
        raise ProtocolError("registry field 'heartbeat_interval' must be > 0")
    return interval


def _routes(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        raise ProtocolError("registry field 'routes' must be a list of [method, path]")
    routes = []
    for route in value:
        if (
            not isinstance(route, list)
            or len(route) != 2
            or not all(isinstance(part, str) for part in route)
        ):
            raise ProtocolError("registry field 'routes' must be a list of [method, path]")
        routes.append((route[0], route[1]))
    return tuple(routes)


# -- the reader ----------------------------------------------------------------------


@dataclass(slots=True)
class DirectoryStats:
    """What the registry reader read (for metrics and tests to see)."""

    records: int = 0
    tombstones: int = 0
    #: Records skipped because they break the format (each one is logged).
    malformed: int = 0
    #: Fetches the broker failed (the reader tries again).
    fetch_errors: int = 0


class Directory:
    """A caller's view of the registry: read from the beginning, then followed.

    Started on first need (``ready``) and shared by all the caller's calls. Until the
    registry topic exists (no service has started yet, and this caller may not create
    it), the directory is empty and looks for the topic again at most once a second.
    """

    def __init__(self, transport: Transport, settings: Settings) -> None:
        self._transport = transport
        self._settings = settings
        self.topic = registry_topic(settings)
        self.stats = DirectoryStats()
        #: Instances by service name, then by instance id.
        self._services: dict[str, dict[str, InstanceInfo]] = {}
        self._reader: PartitionReader | None = None
        self._task: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()
        self._changed = asyncio.Event()
        self._starting = asyncio.Lock()
        self._absent_until = 0.0
        self._end = 0

    async def ready(self) -> bool:
        """Start reading if not yet, and wait until what the registry held is read.

        False while the registry topic does not exist (the directory is then empty).
        """
        if self._task is None:
            async with self._starting:
                if self._task is None and not await self._start():
                    return False
        if not self._caught_up.is_set():
            try:
                async with asyncio.timeout(CATCH_UP_TIMEOUT):
                    await self._caught_up.wait()
            except TimeoutError:
                logger.warning(
                    "the registry reader has not reached the end of %s after %.0f s; "
                    "answering from what it has read",
                    self.topic,
                    CATCH_UP_TIMEOUT,
                )
                self._caught_up.set()
        return True

    async def _start(self) -> bool:
        now = time.monotonic()
        if now < self._absent_until:
            return False
        if self._reader is not None:  # left by a reader task that died
            reader, self._reader = self._reader, None
            await reader.stop()
        if self._settings.create_topics:
            await self._transport.ensure_topics([registry_topic_spec(self._settings)])
        elif self.topic not in await self._transport.describe_topics([self.topic]):
            self._absent_until = now + ABSENT_RETRY
            return False
        reader = self._transport.partition_reader(self.topic, 0, from_beginning=True)
        await reader.start()
        try:
            self._end = await reader.end_offset()
        except BaseException:
            await reader.stop()
            raise
        if self._end == 0:
            self._caught_up.set()
        self._reader = reader
        self._task = asyncio.create_task(self._follow(reader), name="kourier-registry")
        self._task.add_done_callback(self._ended)
        return True

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            # Not expected (broker errors are retried): say so, and let ``ready`` start
            # a new reader at the next lookup.
            self.stats.fetch_errors += 1
            logger.error("the registry reader of %s stopped: %r", self.topic, error)
            if self._task is task:
                self._task = None

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.stop()

    async def services(self) -> dict[str, ServiceInfo]:
        """Every service the registry holds an instance of, by name."""
        await self.ready()
        return {
            name: ServiceInfo(name, _ordered(instances.values()))
            for name, instances in sorted(self._services.items())
        }

    def service(self, name: str) -> ServiceInfo | None:
        """What is known now of ``name`` (call ``ready`` first), or None."""
        instances = self._services.get(name)
        return ServiceInfo(name, _ordered(instances.values())) if instances else None

    def has_live(self, name: str) -> bool:
        instances = self._services.get(name)
        if not instances:
            return False
        now = time.time()
        return any(info.live_at(now) for info in instances.values())

    def stale_grace(self, name: str) -> float:
        """Seconds worth waiting for a heartbeat of ``name`` that is late, not gone.

        When none of its instances is live but the newest heartbeat lapsed only lately
        (less than ``LIVE_INTERVALS`` more intervals ago), the cause may be the broker:
        during an outage no instance can heartbeat, and right after it every
        registration is stale until the next heartbeats arrive. One interval is then
        worth waiting; an instance that is really gone ages past this and fails fast.
        """
        instances = self._services.get(name)
        if not instances:
            return 0.0
        newest = max(instances.values(), key=lambda i: i.heartbeat_at)
        lapsed = time.time() - newest.heartbeat_at
        if lapsed <= 2 * LIVE_INTERVALS * newest.heartbeat_interval:
            return newest.heartbeat_interval
        return 0.0

    async def wait_for_live(self, name: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a live instance of ``name``; whether one came."""
        try:
            async with asyncio.timeout(timeout):
                while not self.has_live(name):
                    if self._task is None:
                        # The topic did not exist: look again as often as allowed.
                        await self.ready()
                        await asyncio.sleep(ABSENT_RETRY if self._task is None else 0)
                        continue
                    changed = self._changed
                    await changed.wait()
        except TimeoutError:
            return False
        return True

    # -- following the topic -----------------------------------------------------------

    async def _follow(self, reader: PartitionReader) -> None:
        while True:
            try:
                records = await reader.fetch(0.5)
            except BrokerError as exc:
                self.stats.fetch_errors += 1
                logger.warning("reading the registry %s failed, trying again: %s", self.topic, exc)
                await asyncio.sleep(FETCH_RETRY)
                continue
            self.apply(records)
            # The last record is never compacted away (Kafka's cleaner leaves the active
            # segment alone), so the reader meets the end offset it was given. An empty
            # fetch proves nothing: a new reader's first fetches may come back empty.
            if records and records[-1].offset + 1 >= self._end:
                self._caught_up.set()

    def apply(self, records: Iterable[Record]) -> None:
        """Take registrations and tombstones in; skip (log, count) malformed ones."""
        changed = False
        for record in records:
            self.stats.records += 1
            try:
                key, info = decode(record.key, record.value)
            except ProtocolError as exc:
                self.stats.malformed += 1
                logger.warning("skipped a malformed registry record at %s: %s", record.where, exc)
                continue
            service, _, instance_id = key.partition("/")
            if info is None:
                self.stats.tombstones += 1
                instances = self._services.get(service, {})
                changed |= instances.pop(instance_id, None) is not None
                if not instances:
                    self._services.pop(service, None)
            else:
                self._services.setdefault(service, {})[instance_id] = info
                changed = True
        if changed:
            self._changed.set()
            self._changed = asyncio.Event()

    def names(self) -> set[str]:
        """The names of the services the registry holds instances of."""
        return set(self._services)


def _ordered(instances: Iterable[InstanceInfo]) -> tuple[InstanceInfo, ...]:
    return tuple(sorted(instances, key=lambda i: (i.started_at, i.instance_id)))
