"""Which service a request is for, and the target it gets there."""

from __future__ import annotations

import builtins
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Mount

from kourier.cli import main
from kourier.gateway import HostRouting, PathRouting, Route, StaticCatalog
from kourier.gateway.forward import HOP_BY_HOP, forwarded_headers, prefers_async
from kourier.gateway.problems import Problem
from kourier.settings import check_service_name
from tests.gateway.conftest import Stack, http


def scope(path: str, *, host: str = "gw", query: bytes = b"", root: str = "") -> dict[str, Any]:
    return {
        "type": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": root,
        "query_string": query,
        "headers": [(b"host", host.encode())],
    }


def test_path_routing_takes_the_first_segment_and_keeps_the_encoding() -> None:
    """/orders/a%2Fb?x=1 goes to orders as /a%2Fb?x=1, encoding untouched."""
    route = PathRouting().route(scope("/orders/a%2Fb", query=b"x=1"))
    assert route == Route("orders", "/a%2Fb?x=1")
    assert PathRouting().route(scope("/orders")) == Route("orders", "/")
    assert PathRouting().route(scope("/")) is None
    assert PathRouting().route(scope("/no.dots/x")) is None


def test_path_routing_below_a_mount() -> None:
    """Under a mount's root path, the service is the first segment after it."""
    route = PathRouting().route(scope("/kafka/orders/7", root="/kafka"))
    assert route == Route("orders", "/7")


def test_host_routing_takes_the_service_from_the_host() -> None:
    """orders.api.example.com:8080 with suffix .api.example.com is service orders."""
    routing = HostRouting(".api.example.com")
    assert routing.route(scope("/x/y", host="Orders.api.example.com:8080")) == Route(
        "orders", "/x/y"
    )
    assert routing.route(scope("/x", host="example.com")) is None
    assert routing.server_url("http://gw", "orders") == "http://orders.api.example.com"
    with pytest.raises(ValueError, match="must start with"):
        HostRouting("api.example.com")


@given(st.text(max_size=60), st.binary(max_size=20))
def test_path_routing_never_fails_on_any_path(path: str, query: bytes) -> None:
    """Any path gives no route or a valid service with a target starting with '/'."""
    route = PathRouting().route(scope("/" + path, query=query))
    if route is not None:
        assert check_service_name(route.service) == route.service
        assert route.target.startswith("/")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"respond-async", True),
        (b"wait=10, Respond-Async", True),
        (b"respond-async; x=1", True),
        (b"return=minimal", False),
        (b"respond-asyncish", False),
    ],
)
def test_prefer_header_parsing(value: bytes, expected: bool) -> None:
    """respond-async is found among the preferences of Prefer (RFC 7240), in any case."""
    assert prefers_async({"headers": [(b"prefer", value)]}) is expected


async def test_the_gateway_mounts_in_another_app(stack: Stack) -> None:
    """Mounted under /kafka in a Starlette app, calls and the docs' server URL work."""
    gateway = stack.gateway(catalog=StaticCatalog(["shop"]))
    app = Starlette(routes=[Mount("/kafka", app=gateway)])
    async with http(app) as client:
        items = await client.get("/kafka/shop/items?n=2")
        document = (await client.get("/kafka/docs/shop/openapi.json")).json()
        page = (await client.get("/kafka/docs")).text
    assert items.text == '{"i": 0}\n{"i": 1}\n'
    assert document["servers"][0]["url"] == "http://gw/kafka/shop"
    assert 'src="/kafka/docs/static/swagger-ui-bundle.js"' in page


def test_without_uvicorn_the_command_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kourier gateway` without uvicorn exits 2 naming the extra to install."""
    real_import = builtins.__import__

    def no_uvicorn(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvicorn":
            raise ImportError("No module named 'uvicorn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    assert main(["gateway"]) == 2
    assert "pip install 'kourier[gateway]'" in capsys.readouterr().err


header_names = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}", fullmatch=True).map(str.encode)
header_lists = st.lists(st.tuples(header_names, st.binary(max_size=30)), max_size=10)


@given(header_lists)
def test_forwarded_headers_drop_hop_by_hop_and_refuse_reserved_names(
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Whatever the headers, none hop-by-hop is passed on, X-Forwarded-* are added, and a
    kourier-* name is refused with a 400 problem rather than sent."""
    scope = {"headers": headers, "client": ("10.1.2.3", 4000), "scheme": "https"}
    reserved = any(name.lower().startswith(b"kourier-") for name, _ in headers)
    try:
        passed = forwarded_headers(scope)
    except Problem as problem:
        assert reserved and problem.status == 400
        return
    assert not reserved
    assert not {name for name, _ in passed} & HOP_BY_HOP
    assert (b"x-forwarded-for", b"10.1.2.3") in passed
    assert (b"x-forwarded-proto", b"https") in passed
    kept = [(n.lower(), v) for n, v in headers if n.lower() not in HOP_BY_HOP]
    assert passed[: len(kept)] == kept


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "0"], "default_timeout"),
        (["--timeout", "400"], "default_timeout"),
        (["--middleware", "nowhere"], "module:attribute"),
        (["--host-suffix", "example.com"], "must start with '.'"),
    ],
)
def test_bad_gateway_options_exit_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kourier gateway` with an impossible option exits 2 before serving, saying why."""
    assert main(["gateway", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
