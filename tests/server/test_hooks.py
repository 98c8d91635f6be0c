"""Service hooks: each fires with its event; a failing hook never fails the request."""

from __future__ import annotations

from typing import Any

import pytest

from kourier import protocol
from kourier.errors import SettingsError
from kourier.server.hooks import DeadLetterEvent, ErrorEvent, Hooks, ReplyEvent, RequestEvent
from kourier.server.serve import Service
from kourier.transports.base import TopicSpec
from kourier.transports.memory import MemoryTransport
from tests import apps
from tests.server.conftest import SETTINGS, Wire, eventually


async def test_every_hook_fires_with_its_event() -> None:
    """start, request, reply, error, expired, dead_letter and stop each see their event."""
    seen: dict[str, list[Any]] = {name: [] for name in Hooks.NAMES}

    def recorder(name: str) -> Any:
        async def record(event: Any) -> None:  # async hooks are awaited
            seen[name].append(event)

        return record

    transport = MemoryTransport()
    await transport.ensure_topics([TopicSpec(SETTINGS.reply_topic, 1)])
    reader = transport.partition_reader(SETTINGS.reply_topic, 0)
    await reader.start()
    service = Service(
        apps.app,
        "orders",
        SETTINGS,
        transport=MemoryTransport(transport.broker),
        hooks={name: [recorder(name)] for name in Hooks.NAMES},
    )
    async with service:
        w = Wire(transport, reader)
        ok = await w.call("GET", "/hello/hooks")
        await w.replies(ok.id)
        boom = await w.call("GET", "/boom")
        await w.replies(boom.id)
        await w.call("GET", "/hello/late", deadline_ms=protocol.now_ms() - 1)
        await transport.publish(SETTINGS.request_topic("orders"), b"x", headers=[("a", b"b")])
        await eventually(lambda: len(seen["dead_letter"]) == 1 and len(seen["expired"]) == 1)
        await eventually(lambda: len(seen["reply"]) == 2)
    assert seen["start"] == [service] and seen["stop"] == [service]
    assert [e.request.id for e in seen["request"]] == [ok.id, boom.id]
    assert all(isinstance(e, RequestEvent) for e in seen["request"] + seen["expired"])
    replies: list[ReplyEvent] = seen["reply"]
    assert {(e.route, e.status) for e in replies} == {("/hello/{name}", 200), ("/boom", 500)}
    assert all(e.duration > 0 for e in replies)
    [error] = seen["error"]
    assert isinstance(error, ErrorEvent) and isinstance(error.error, RuntimeError)
    [dead] = seen["dead_letter"]
    assert isinstance(dead, DeadLetterEvent) and "not a kourier record" in dead.reason


async def test_a_failing_hook_is_logged_and_the_request_still_answered(
    wire: tuple[Wire, Service], caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises does not change the reply; the failure is logged."""
    w, service = wire

    def broken(event: Any) -> None:
        raise ValueError("hook bug")

    service.hooks.add("request", broken)
    request = await w.call("GET", "/hello/anyway")
    [reply] = await w.replies(request.id)
    assert reply.status == 200
    assert "request hook" in caplog.text and "hook bug" in caplog.text


def test_unknown_hook_names_are_refused() -> None:
    """A misspelt hook name is a clear error, not a silently ignored hook."""
    with pytest.raises(SettingsError, match="'replied' is not a hook"):
        Hooks({"replied": [print]})
    with pytest.raises(SettingsError, match="not callable"):
        Hooks({"reply": ["print"]})  # type: ignore[list-item]


def test_one_hook_may_be_given_bare_and_every_way_is_checked() -> None:
    """{"reply": f} works like {"reply": [f]}; add() refuses what Hooks() refuses."""
    hooks = Hooks({"reply": print, "error": [print, repr]})
    assert hooks.has("reply") and hooks.has("error") and not hooks.has("start")
    with pytest.raises(SettingsError, match="42 for 'reply' is not callable"):
        Hooks({"reply": 42})  # type: ignore[dict-item]
    with pytest.raises(SettingsError, match="not callable"):
        hooks.add("reply", "print")  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="choose from start, stop, request"):
        hooks.add("replied", print)
