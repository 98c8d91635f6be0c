"""The auth example wraps the gateway: no token, no call; the probes stay open."""

from __future__ import annotations

import pytest
from examples.gateway_auth import BearerAuth, bearer_auth

from kourier.cli import build_parser
from kourier.cli.gateway import build_app
from tests.gateway.conftest import Stack, http

pytestmark = pytest.mark.timeout(30)


async def test_a_request_without_the_token_is_401(stack: Stack) -> None:
    """Without a bearer token, or with a wrong one, the service is never called."""
    app = BearerAuth(stack.gateway(), ["s3cret"])
    async with http(app) as client:
        missing = await client.get("/shop/items")
        wrong = await client.get("/shop/items", headers={"Authorization": "Bearer nope"})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 401


async def test_a_request_with_the_token_reaches_the_service(stack: Stack) -> None:
    """With a known token the call goes through; probes need none."""
    app = BearerAuth(stack.gateway(), ["other", "s3cret"])
    async with http(app) as client:
        response = await client.get("/shop/items?n=1", headers={"Authorization": "Bearer s3cret"})
        probe = await client.get("/livez")
    assert response.status_code == 200
    assert response.text == '{"i": 0}\n'
    assert probe.status_code == 200


def test_the_cli_wraps_the_gateway_in_the_middleware(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kourier gateway --middleware examples.gateway_auth:bearer_auth` builds the wrapped app."""
    monkeypatch.setenv("GATEWAY_TOKENS", "a,b")
    args = build_parser().parse_args(
        ["gateway", "--middleware", "examples.gateway_auth:bearer_auth", "--service", "x"]
    )
    app = build_app(args)
    assert isinstance(app, BearerAuth)
    assert app.tokens == [b"a", b"b"]


def test_the_middleware_refuses_to_run_without_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """An auth middleware with no token configured fails at start, not open."""
    monkeypatch.setenv("GATEWAY_TOKENS", "")
    with pytest.raises(ValueError, match="GATEWAY_TOKENS"):
        bearer_auth(lambda scope, receive, send: None)  # type: ignore[arg-type,return-value]
