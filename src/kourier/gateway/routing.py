"""Which service an HTTP request is for, and the target it gets there.

``PathRouting`` (the default) takes the first path segment: ``/orders/items/7?x=1`` goes
to service ``orders`` as ``/items/7?x=1``. ``HostRouting`` takes the service from the
Host header (``orders.api.example.com`` with suffix ``.api.example.com``) and leaves
the target as it came. A routing only reads the scope; it must never answer, and it
keeps the path's percent-encoding exactly as the caller sent it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kourier.gateway.asgi import Scope, header
from kourier.settings import check_service_name


@dataclass(frozen=True, slots=True)
class Route:
    """A request's service and its origin-form target there (path and query)."""

    service: str
    target: str


class Routing(Protocol):
    """Tells a request's service from its scope; None when the request names none."""

    def route(self, scope: Scope) -> Route | None: ...

    def server_url(self, base_url: str, service: str) -> str:
        """The URL under which the gateway serves ``service`` (for OpenAPI ``servers``)."""
        ...


def raw_path(scope: Scope) -> str:
    """The path as the caller sent it (percent-encoded), below the mount's root path."""
    raw = scope.get("raw_path")
    path: str = raw.decode("latin-1") if raw else scope["path"]
    root = scope.get("root_path", "")
    # Servers differ on whether raw_path includes the root path of a mount.
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path.partition("?")[0]


def _with_query(path: str, scope: Scope) -> str:
    query = scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


def _valid_service(name: str) -> bool:
    try:
        check_service_name(name)
    except ValueError:
        return False
    return True


def _hostname(host: str) -> str:
    """The Host header without its port, lower case."""
    name, colon, port = host.lower().rpartition(":")
    return name if colon and port.isdigit() else host.lower()


class PathRouting:
    """``/{service}/{path...}``: the first path segment names the service."""

    def route(self, scope: Scope) -> Route | None:
        path = raw_path(scope)
        service, _, rest = path.removeprefix("/").partition("/")
        if not service or not _valid_service(service):
            return None
        return Route(service, _with_query("/" + rest, scope))

    def server_url(self, base_url: str, service: str) -> str:
        return f"{base_url}/{service}"


class HostRouting:
    """``{service}{suffix}`` in the Host header names the service; the path is kept."""

    def __init__(self, suffix: str, scheme: str = "http") -> None:
        if not suffix.startswith("."):
            raise ValueError(f"host suffix {suffix!r} must start with '.'")
        self.suffix = suffix.lower()
        self.scheme = scheme

    def route(self, scope: Scope) -> Route | None:
        host = _hostname(header(scope, b"host") or "")
        if not host.endswith(self.suffix):
            return None
        service = host[: -len(self.suffix)]
        if not service or not _valid_service(service):
            return None
        return Route(service, _with_query(raw_path(scope), scope))

    def server_url(self, base_url: str, service: str) -> str:
        return f"{self.scheme}://{service}{self.suffix}"
