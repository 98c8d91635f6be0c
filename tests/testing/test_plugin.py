"""The pytest plugin as a user's project sees it: pytest runs in a directory of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kourier.testing import plugin
from tests.conftest import kafka_bootstrap

PYPROJECT = """
[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
"""

USER_TESTS = """
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI, Request

from kourier import Client


@asynccontextmanager
async def lifespan(app):
    async with Client() as client:  # the app's own client, from the environment
        yield {"client": client}


app = FastAPI(lifespan=lifespan)


@app.get("/ping")
async def ping(request: Request) -> dict:
    pong = await request.state.client.request("pong", "GET", "/pong")
    return {"ping": pong.json()}


pong = FastAPI()


@pong.get("/pong")
async def answer() -> str:
    return "pong"


@pong.post("/notes", status_code=202)
async def note(body: dict) -> None:
    if body.get("bad"):
        raise ValueError("bad note")


async def test_a_service_calls_another(kourier_service):
    await kourier_service(pong, "pong")
    ping = await kourier_service(app, "ping")
    assert (await ping.http.get("/ping")).json() == {"ping": "pong"}


async def test_one_way_failures_are_dead_lettered(kourier_service, kourier_client):
    notes = await kourier_service(pong, "pong", raise_app_exceptions=False, retry_attempts=1)
    await kourier_client.send("pong", "POST", "/notes", json={"bad": True})
    await notes.wait_until(lambda: notes.dead_letters, timeout=20)
    assert notes.messages[0].body == b'{"bad":true}'


def test_the_broker_reads_back_in_memory_only(kourier_broker):
    assert kourier_broker.url.startswith("memory://")
"""


def run_pytest(
    directory: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    (directory / "pyproject.toml").write_text(PYPROJECT)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error", *args],
        cwd=directory,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_plugin_is_found_by_its_entry_point_and_loads_with_warnings_as_errors(
    tmp_path: Path,
) -> None:
    """Installing kourier is enough: pytest lists the fixtures and the option, warning-free."""
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    assert True\n")
    listed = run_pytest(tmp_path, "--fixtures", "-q")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for name in ("kourier_settings", "kourier_broker", "kourier_service", "kourier_client"):
        assert name in listed.stdout
    assert "kourier_kafka [session scope]" in listed.stdout
    assert "--kourier-kafka" in run_pytest(tmp_path, "--help").stdout
    plain = run_pytest(tmp_path, "-q")
    assert plain.returncode == 0 and "1 passed" in plain.stdout, plain.stdout + plain.stderr


def test_a_users_tests_run_in_memory(tmp_path: Path) -> None:
    """The fixtures serve apps, join their own clients to the test broker, read back."""
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    env = {k: v for k, v in os.environ.items() if k != "KOURIER_BOOTSTRAP_SERVERS"}
    result = run_pytest(tmp_path, "-q", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


@pytest.mark.kafka
@pytest.mark.parametrize("kafka_client", ["aiokafka", "confluent"])
def test_the_same_tests_run_on_kafka_with_one_flag(tmp_path: Path, kafka_client: str) -> None:
    """--kourier-kafka runs them on the broker KOURIER_BOOTSTRAP_SERVERS names, through
    either client library; the in-memory read-back is skipped there with its reason."""
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    env = {
        **os.environ,
        "KOURIER_BOOTSTRAP_SERVERS": kafka_bootstrap(),
        "KOURIER_KAFKA_CLIENT": kafka_client,
    }
    result = run_pytest(tmp_path, "-q", "-rs", "--kourier-kafka", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed, 1 skipped" in result.stdout
    assert "--kourier-kafka runs on Kafka" in result.stdout


def test_without_pytest_asyncio_the_fixtures_say_what_to_install(tmp_path: Path) -> None:
    """When pytest-asyncio is not installed, an async fixture fails naming kourier[testing]."""
    hidden = tmp_path / "hidden"
    (hidden / "pytest_asyncio").mkdir(parents=True)
    (hidden / "pytest_asyncio" / "__init__.py").write_text("raise ImportError('not installed')\n")
    (tmp_path / "test_user.py").write_text("def test_client(kourier_client):\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(hidden)}
    (tmp_path / "pyproject.toml").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:asyncio", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "needs pytest-asyncio: pip install 'kourier[testing]'" in result.stdout


def test_the_local_broker_is_whatever_kourier_kafka_start_prints_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """start_local_kafka runs `kourier kafka start` and reads its KEY=VALUE lines."""
    calls: list[list[str]] = []

    def run(command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        out = "KOURIER_KAFKA_DIR=/somewhere\nKOURIER_BOOTSTRAP_SERVERS=127.0.0.1:29092\n"
        return subprocess.CompletedProcess(command, 0, out, "")

    monkeypatch.setattr(subprocess, "run", run)
    found = plugin.start_local_kafka()
    assert found["KOURIER_BOOTSTRAP_SERVERS"] == "127.0.0.1:29092"
    assert calls == [[sys.executable, "-m", "kourier", "kafka", "start"]]


def test_a_failed_local_broker_start_fails_the_session_saying_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failing `kourier kafka start` fails with its message and the way around it."""

    def run(command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "no Java: install a JDK 17+")

    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(pytest.fail.Exception, match="no Java") as failed:
        plugin.start_local_kafka()
    assert "KOURIER_BOOTSTRAP_SERVERS" in str(failed.value)
