"""A service's OpenAPI document, fetched over Kafka from the service's own app.

``GET /openapi.json`` is sent as an ordinary kourier call (FastAPI and most frameworks
serve it there); the answer is kept for ``ttl`` seconds per service. ``for_gateway``
rewrites ``servers`` so that "try it" calls from the docs page go through the gateway.
It must never change the document it was given (it copies), nor cache a failure.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from typing import Any, Protocol

logger = logging.getLogger("kourier.gateway")

#: Where a service's app publishes its OpenAPI document.
OPENAPI_PATH = "/openapi.json"


class OpenAPIUnavailable(Exception):
    """The service gave no usable OpenAPI document; says why."""


class Caller(Protocol):
    """What fetching needs of a ``kourier.Client``."""

    async def request(self, service: str, method: str, path: str, *, timeout: float) -> Any: ...


async def fetch(client: Caller, service: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """The OpenAPI document ``service`` publishes, or ``OpenAPIUnavailable`` saying why."""
    response = await client.request(service, "GET", OPENAPI_PATH, timeout=timeout)
    if response.status_code != 200:
        raise OpenAPIUnavailable(
            f"GET {OPENAPI_PATH} on {service!r} answered {response.status_code}: does its "
            "app publish an OpenAPI document there?"
        )
    try:
        document = json.loads(response.content)
    except ValueError as exc:
        raise OpenAPIUnavailable(f"{service!r}'s {OPENAPI_PATH} is not JSON: {exc}") from None
    if not isinstance(document, dict) or "openapi" not in document:
        raise OpenAPIUnavailable(f"{service!r}'s {OPENAPI_PATH} has no 'openapi' field")
    return document


def for_gateway(document: dict[str, Any], server_url: str, service: str) -> dict[str, Any]:
    """A copy of ``document`` whose only server is the gateway's URL for ``service``."""
    rewritten = copy.deepcopy(document)
    rewritten["servers"] = [
        {"url": server_url, "description": f"{service} over Kafka, through this gateway"}
    ]
    return rewritten


class OpenAPICache:
    """Each service's document, fetched at most once per ``ttl`` seconds."""

    def __init__(self, client: Caller, *, ttl: float = 30.0, timeout: float = 5.0) -> None:
        self.client = client
        self.ttl = ttl
        self.timeout = timeout
        self._documents: dict[str, tuple[float, dict[str, Any]]] = {}

    async def get(self, service: str) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        cached = self._documents.get(service)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        document = await fetch(self.client, service, timeout=self.timeout)
        self._documents[service] = (asyncio.get_running_loop().time(), document)
        return document
