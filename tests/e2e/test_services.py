"""The registry end to end: `kourier run` processes, `kourier services`, and callers
that fail fast, with curl's exit codes."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import kafka_bootstrap
from tests.e2e.test_cli import kourier
from tests.e2e.test_processes import ServiceProcess
from tests.processes import ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(180)]

HEARTBEAT = 0.5


@pytest.fixture
def env(tmp_path: Any) -> dict[str, str]:
    return {
        **os.environ,
        "KOURIER_BOOTSTRAP_SERVERS": kafka_bootstrap(),
        "KOURIER_TOPIC_PREFIX": f"reg{uuid.uuid4().hex[:8]}.",
        "KOURIER_HEARTBEAT_INTERVAL": str(HEARTBEAT),
        "KOURIER_E2E_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture
def service(env: dict[str, str]) -> Iterator[ServiceProcess]:
    process = ServiceProcess(env)
    try:
        assert process.ready.wait(60), "".join(process.lines[-20:])
        yield process
    finally:
        process.stop()


def listed(env: dict[str, str]) -> dict[str, Any]:
    result = kourier(env, "services", "--json")
    assert result.returncode == 0, result.stderr
    return {s["name"]: s for s in json.loads(result.stdout)["services"]}


def test_services_lists_a_running_instance_and_describe_shows_its_routes(
    service: ServiceProcess, env: dict[str, str]
) -> None:
    """`kourier services` shows the service up with its live instance; `describe` shows
    the instance's pid and the app's routes, as text and as JSON."""
    text = kourier(env, "services")
    assert text.returncode == 0, text.stderr
    assert "e2e: up, 1 of 1 instances live" in text.stdout
    found = listed(env)["e2e"]
    assert found["live"] == 1
    [instance] = found["instances"]
    assert instance["pid"] == service.process.pid and instance["live"] is True
    described = kourier(env, "services", "describe", "e2e", "--json")
    assert described.returncode == 0, described.stderr
    assert json.loads(described.stdout)["instances"][0]["instance_id"] == instance["instance_id"]
    unknown = kourier(env, "services", "describe", "e2f")
    assert unknown.returncode == 6 and "did you mean 'e2e'" in unknown.stderr


def test_a_misspelt_service_exits_6_at_once_with_a_suggestion(
    service: ServiceProcess, env: dict[str, str]
) -> None:
    """`kourier request` and `kourier send` to an unknown service exit 6 (curl: could
    not resolve host) with one line naming it and the close name, in no time."""
    for command in (("request", "e2f", "GET", "/items"), ("send", "e2f", "POST", "/record")):
        started = time.monotonic()
        result = kourier(env, *command)
        assert result.returncode == 6, result.stderr
        assert "no service 'e2f'; did you mean 'e2e'?" in result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
        # The whole process (interpreter, imports, broker connection): the lookup
        # itself is measured in tests/test_fail_fast.py.
        assert time.monotonic() - started < 15


def test_a_killed_instance_ages_out_and_a_stopped_one_withdraws(env: dict[str, str]) -> None:
    """SIGKILL: the instance stays listed but is not live after 3 heartbeat intervals,
    requests exit 7 and sends warn; SIGTERM: the tombstone removes the instance."""
    killed = ServiceProcess(env)
    assert killed.ready.wait(60), "".join(killed.lines[-20:])
    assert listed(env)["e2e"]["live"] == 1
    os.kill(killed.process.pid, signal.SIGKILL)
    killed.stop()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and listed(env)["e2e"]["live"]:
        time.sleep(HEARTBEAT)
    [gone] = listed(env)["e2e"]["instances"]
    assert gone["live"] is False and gone["pid"] == killed.process.pid
    request = kourier(env, "request", "e2e", "GET", "/items")
    assert request.returncode == 7, request.stderr
    assert "no live instance of service 'e2e'" in request.stderr
    sent = kourier(env, "send", "e2e", "POST", "/record", "--json", '{"id": "queued"}')
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("sent: ")
    assert "no instance of 'e2e' is live" in sent.stderr

    stopped = ServiceProcess(env)
    assert stopped.ready.wait(60), "".join(stopped.lines[-20:])
    assert listed(env)["e2e"]["live"] == 1
    assert stopped.stop() == 0
    remaining = listed(env)["e2e"]["instances"]
    assert [i["pid"] for i in remaining] == [killed.process.pid], remaining
