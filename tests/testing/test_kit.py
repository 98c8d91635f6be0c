"""kourier.testing on the in-memory broker: memory:// settings, serve_app, read-backs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kourier import BrokerError, Client, Service, Settings, SettingsError, StreamBroken
from kourier.testing import Broker, memory_broker, serve_app
from kourier.testing.plugin import StartService
from tests.testing import apps


async def test_an_apps_own_client_from_the_environment_joins_the_test_broker(
    kourier_service: StartService,
) -> None:
    """An app whose lifespan builds Client() from the environment calls a second service."""
    await kourier_service(apps.stock, "stock")
    orders = await kourier_service(apps.orders, "orders")
    created = await orders.http.post("/orders", json={"item": "book"})
    assert created.status_code == 201
    assert created.json() == {"item": "book", "in_stock": True}


def test_memory_url_settings_build_a_transport_on_the_named_broker() -> None:
    """Settings(bootstrap_servers="memory://NAME") reach the broker open under NAME."""
    with memory_broker("kit-named") as broker:
        service = Service(apps.stock, "stock", Settings(bootstrap_servers="memory://kit-named"))
        assert getattr(service.transport, "broker", None) is broker.memory
    assert broker.url == "memory://kit-named"


def test_an_unopened_memory_name_fails_saying_how_to_open_it() -> None:
    """A memory:// name that no test opened fails at construction, naming memory_broker."""
    with pytest.raises(BrokerError, match=r"memory_broker\('nobody'\)"):
        Client(Settings(bootstrap_servers="memory://nobody"))


def test_a_closed_broker_is_unreachable_and_names_cannot_be_opened_twice() -> None:
    """A broker lives for its with block only, and one name is one broker."""
    with (
        memory_broker() as broker,
        pytest.raises(BrokerError, match="already open"),
        memory_broker(broker.name),
    ):
        pass
    with pytest.raises(BrokerError, match="no in-memory broker"):
        Client(broker.settings)


@pytest.mark.parametrize("servers", ["memory://", "memory://a/b", "memory://a:1"])
def test_a_memory_url_needs_a_plain_name(servers: str) -> None:
    """memory:// without a name, or with one Kafka could not name a topic, is refused."""
    with pytest.raises(SettingsError, match="memory://NAME"):
        Settings(bootstrap_servers=servers)


async def test_app_exceptions_come_out_of_the_call_that_caused_them(
    kourier_service: StartService,
) -> None:
    """With raise_app_exceptions the app's exception is raised by native and httpx calls."""
    orders = await kourier_service(apps.orders, "orders")
    with pytest.raises(LookupError, match="no such order"):
        await orders.client.request("orders", "GET", "/boom")
    with pytest.raises(LookupError, match="no such order"):
        await orders.http.get("/boom")
    with pytest.raises(KeyError, match="stream"):
        async with orders.client.stream("orders", "GET", "/boom/stream"):
            pass
    assert [type(event.error) for event in orders.errors] == [LookupError] * 2 + [KeyError]


async def test_without_raise_app_exceptions_the_caller_gets_the_500(
    kourier_service: StartService,
) -> None:
    """raise_app_exceptions=False shows what a real caller sees: a 500 with an error id."""
    orders = await kourier_service(apps.orders, "orders", raise_app_exceptions=False)
    response = await orders.http.get("/boom")
    assert response.status_code == 500
    assert response.headers["x-error-id"] == orders.errors[0].error_id


async def test_a_one_way_failure_nobody_waited_for_is_raised_when_serving_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception of a one-way handler is raised at the end of serve_app's block."""
    with memory_broker() as broker, pytest.raises(ValueError, match="bad event"):
        monkeypatch.setenv("KOURIER_BOOTSTRAP_SERVERS", broker.url)  # for the app's Client()
        async with serve_app(
            apps.orders, "orders", broker.settings.replace(retry_attempts=1)
        ) as orders:
            await orders.client.send("orders", "POST", "/events", json={"kind": "bad"})
            await orders.wait_until(lambda: orders.errors)


async def test_an_exception_after_a_stream_began_is_raised_when_serving_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The caller sees StreamBroken mid-stream; the app's own exception ends the block."""
    with memory_broker() as broker, pytest.raises(ConnectionError, match="went away"):
        monkeypatch.setenv("KOURIER_BOOTSTRAP_SERVERS", broker.url)  # for the app's Client()
        async with serve_app(apps.orders, "orders", broker.settings) as orders:
            lines: list[str] = []
            with pytest.raises(StreamBroken):
                async with orders.client.stream("orders", "GET", "/stream/broken") as stream:
                    async for line in stream.aiter_lines():
                        lines.append(line)
            assert lines == ["first"]


async def test_sent_and_dead_lettered_messages_can_be_read_back(
    kourier_service: StartService, kourier_broker: Broker
) -> None:
    """What was sent to a service and what it dead-lettered are there after the fact."""
    orders = await kourier_service(
        apps.orders, "orders", raise_app_exceptions=False, retry_attempts=2, retry_backoff=0.01
    )
    await orders.client.send("orders", "POST", "/events", json={"kind": "paid"})
    await orders.client.send("orders", "POST", "/events", json={"kind": "bad"})
    await orders.wait_until(lambda: len(orders.messages) == 2 and orders.dead_letters)
    assert [m.body for m in kourier_broker.messages("orders")] == [
        b'{"kind":"paid"}',
        b'{"kind":"bad"}',
    ]
    [dead] = kourier_broker.dead_letters("orders")
    assert dead.request is not None and dead.request.body == b'{"kind":"bad"}'
    assert dead.attempts == 2 and "failed with status 500" in dead.reason
    assert orders.dead_letters[0].reason == dead.reason


async def test_serve_app_without_a_broker_in_the_environment_uses_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """serve_app with no settings and no KOURIER_BOOTSTRAP_SERVERS runs in memory."""
    monkeypatch.delenv("KOURIER_BOOTSTRAP_SERVERS", raising=False)
    async with serve_app(apps.stock, "stock") as stock:
        assert stock.settings.bootstrap_servers.startswith("memory://")
        assert (await stock.client.request("stock", "GET", "/stock/book")).json()["level"] == 3
    assert "KOURIER_BOOTSTRAP_SERVERS" not in os.environ


def test_the_kits_public_names_are_sorted_complete_and_need_no_pytest() -> None:
    """kourier.testing exports a sorted, complete __all__ and imports without pytest."""
    import kourier.testing

    public = {n for n in vars(kourier.testing) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(kourier.testing, n)).__name__ == "module"}
    assert sorted(kourier.testing.__all__) == kourier.testing.__all__
    assert set(kourier.testing.__all__) == public - modules
    probe = "import sys, kourier.testing; assert 'pytest' not in sys.modules, 'pytest imported'"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@given(st.text(max_size=30))
@example("a\n")
def test_any_memory_name_is_accepted_as_a_topic_name_or_refused_by_settings(name: str) -> None:
    """A memory:// name is accepted exactly when Kafka could name a topic with it; an
    accepted name no broker was opened under fails with BrokerError, nothing else."""
    servers = f"memory://{name}"
    if re.fullmatch(r"[A-Za-z0-9._-]{1,200}", name):
        with pytest.raises(BrokerError, match="no in-memory broker"):
            Client(Settings(bootstrap_servers=servers))
    else:
        with pytest.raises(SettingsError, match="memory://NAME"):
            Settings(bootstrap_servers=servers)
