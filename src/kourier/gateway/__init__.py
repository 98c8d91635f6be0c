"""The HTTP gateway: plain HTTP in, kourier calls over Kafka out; live API docs.

``Gateway`` is the ASGI app (``kourier gateway`` serves it with uvicorn);
``asyncapi.describe`` builds a service's AsyncAPI 3.0 document. Modules:

    app.py        the ASGI app: its own paths, then a call per request
    routing.py    which service a request is for (path or Host header)
    forward.py    one request carried as a call, its reply streamed back
    limits.py     body size and calls in flight
    problems.py   answers the gateway makes itself (RFC 9457 problem+json)
    catalog.py    the services it knows (the registry, or a fixed list)
    metrics.py    its counters and their Prometheus exposition
    openapi.py    a service's OpenAPI document, fetched over Kafka
    docs.py       the /docs page (Swagger UI served from this process)
    asyncapi.py   the AsyncAPI 3.0 document of a service's Kafka side
    asgi.py       the ASGI types the parts share
"""

from kourier.gateway.app import Gateway
from kourier.gateway.asyncapi import build as asyncapi_document
from kourier.gateway.asyncapi import describe as describe_asyncapi
from kourier.gateway.catalog import CachedCatalog, Catalog, StaticCatalog
from kourier.gateway.limits import Limits
from kourier.gateway.problems import Problem
from kourier.gateway.routing import HostRouting, PathRouting, Route, Routing

__all__ = [
    "CachedCatalog",
    "Catalog",
    "Gateway",
    "HostRouting",
    "Limits",
    "PathRouting",
    "Problem",
    "Route",
    "Routing",
    "StaticCatalog",
    "asyncapi_document",
    "describe_asyncapi",
]
