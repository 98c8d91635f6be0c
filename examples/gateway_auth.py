"""The gateway's hook point for auth: an ASGI middleware that checks a bearer token.

The gateway has no auth of its own. Wrap it in any ASGI middleware; this one lets a
request through only with ``Authorization: Bearer <token>`` where the token is one of
``GATEWAY_TOKENS`` (comma-separated), and keeps the probes open for Kubernetes::

    GATEWAY_TOKENS=s3cret kourier gateway --middleware examples.gateway_auth:bearer_auth

A real deployment would check a signed token (a JWT against its issuer's keys) instead of
a fixed list; the shape stays the same. The header still reaches the service, which may
check it again.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Iterable

from kourier.gateway.asgi import ASGIApp, Receive, Scope, Send, header

#: Paths answered without a token: the orchestrator's probes carry none.
OPEN_PATHS = frozenset({"/livez", "/readyz"})


class BearerAuth:
    """Passes requests with a known bearer token to ``app``; answers others 401."""

    def __init__(self, app: ASGIApp, tokens: Iterable[str]) -> None:
        self.app = app
        self.tokens = [token.encode() for token in tokens if token]
        if not self.tokens:
            raise ValueError("BearerAuth needs at least one token (GATEWAY_TOKENS)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "type": "urn:kourier:problem:unauthorized",
                "title": "Unauthorized",
                "status": 401,
                "detail": "Send 'Authorization: Bearer <token>'.",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"www-authenticate", b'Bearer realm="kourier-gateway"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        scheme, _, token = (header(scope, b"authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.strip().encode("latin-1")
        # Compare every token in constant time: timing must not tell how much matched.
        return any([hmac.compare_digest(given, known) for known in self.tokens])


def bearer_auth(app: ASGIApp) -> ASGIApp:
    """For ``kourier gateway --middleware examples.gateway_auth:bearer_auth``."""
    return BearerAuth(app, os.environ.get("GATEWAY_TOKENS", "").split(","))
