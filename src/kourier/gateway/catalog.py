"""What services the gateway can reach, and whether an instance of each is live.

A ``Catalog`` is anything with ``async def services()`` returning service name ->
``ServiceView``: the service registry's ``Client.services()`` is one, a fixed list of
names (``StaticCatalog``, the ``--service`` option) another. ``CachedCatalog`` asks its
source at most once per ``ttl`` seconds, so a burst of calls costs one look-up.
This module only reads; it must never decide an HTTP answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger("kourier.gateway")


class InstanceView(Protocol):
    """One running instance of a service, as the registry reports it."""

    @property
    def instance_id(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def pid(self) -> int: ...
    @property
    def kourier_version(self) -> str: ...
    @property
    def app_version(self) -> str | None: ...
    @property
    def live(self) -> bool: ...


class ServiceView(Protocol):
    """A service: its name, its instances, and whether any of them is live."""

    @property
    def name(self) -> str: ...
    @property
    def instances(self) -> tuple[InstanceView, ...]: ...
    @property
    def live(self) -> bool: ...


class Catalog(Protocol):
    """A source of the services on the cluster."""

    async def services(self) -> Mapping[str, ServiceView]: ...


@dataclass(frozen=True)
class ListedService:
    """A service named in a fixed list: nothing is known about its instances."""

    name: str
    instances: tuple[InstanceView, ...] = ()
    #: Assumed: without a registry, only a call can tell.
    live: bool = True


class StaticCatalog:
    """A fixed list of service names (``kourier gateway --service NAME``)."""

    #: No registry behind it: instances and health are not known.
    knows_instances = False

    def __init__(self, names: Iterable[str]) -> None:
        self._services = {name: ListedService(name) for name in names}

    async def services(self) -> Mapping[str, ServiceView]:
        return self._services

    def allows(self, name: str) -> bool:
        """Whether the gateway may call ``name`` at all (the ``--service`` list)."""
        return name in self._services


class CachedCatalog:
    """``source``'s answer, kept for ``ttl`` seconds; ``only`` keeps just those names."""

    def __init__(
        self, source: Catalog, *, ttl: float = 2.0, only: Iterable[str] | None = None
    ) -> None:
        self.source = source
        self.ttl = ttl
        self.only = None if only is None else frozenset(only)
        self.knows_instances: bool = getattr(source, "knows_instances", True)
        self._value: Mapping[str, ServiceView] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    def allows(self, name: str) -> bool:
        """Whether the gateway may call ``name`` at all: any name without ``only``."""
        return self.only is None or name in self.only

    async def services(self) -> Mapping[str, ServiceView]:
        now = asyncio.get_running_loop().time()
        if self._value is not None and now - self._at < self.ttl:
            return self._value
        async with self._lock:
            if self._value is None or asyncio.get_running_loop().time() - self._at >= self.ttl:
                found = await self.source.services()
                if self.only is not None:
                    found = {name: info for name, info in found.items() if name in self.only}
                self._value, self._at = found, asyncio.get_running_loop().time()
            return self._value


def registry_of(client: Any) -> Catalog | None:
    """The client itself when it has the service registry (``Client.services``), else None."""
    services = getattr(client, "services", None)
    return client if callable(services) else None
