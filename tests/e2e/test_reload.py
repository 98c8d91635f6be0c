"""`kourier run --reload` as a developer uses it: edit a file, the service restarts."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from kourier import Client, Settings
from tests.conftest import kafka_bootstrap
from tests.processes import ROOT, LoggedProcess

APP = """
import asyncio
import pathlib

from fastapi import FastAPI

app = FastAPI()
VERSION = {version}


@app.get("/version")
async def version() -> dict:
    return {{"version": VERSION}}


@app.get("/slow")
async def slow() -> dict:
    pathlib.Path(__file__).with_name("slow-started").touch()
    await asyncio.sleep(2)
    return {{"version": VERSION}}
"""


def stop(supervisor: LoggedProcess) -> None:
    """Stop the supervisor (it stops its service: the service has a session of its own,
    so killing the supervisor alone would leave it running)."""
    if supervisor.running:
        supervisor.process.terminate()
        try:
            supervisor.process.wait(30)
        except subprocess.TimeoutExpired:
            supervisor.process.kill()
            supervisor.process.wait()
    supervisor.join_reader()


def write_app(package: Path, version: int) -> None:
    (package / "main.py").write_text(textwrap.dedent(APP.format(version=version)))


async def version_of(client: Client, path: str = "/version", timeout: float = 10) -> int:
    response = await client.request("reloaded", "GET", path, timeout=timeout)
    assert response.status_code == 200, response.text
    return int(response.json()["version"])


@pytest.mark.kafka
@pytest.mark.e2e
@pytest.mark.timeout(180)
async def test_an_edited_file_restarts_the_service_after_draining(tmp_path: Path) -> None:
    """Editing the app restarts it: a call in flight finishes on the old code, then the
    new code answers, and SIGTERM stops the supervisor and its service."""
    package = tmp_path / "reloadsvc"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write_app(package, 1)
    prefix = f"reload{uuid.uuid4().hex[:8]}."
    env = {
        **os.environ,
        "KOURIER_BOOTSTRAP_SERVERS": kafka_bootstrap(),
        "KOURIER_TOPIC_PREFIX": prefix,
        "KOURIER_DRAIN_TIMEOUT": "10",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    argv = [sys.executable, "-m", "kourier", "run", "reloadsvc.main:app", "--service", "reloaded"]
    supervisor = LoggedProcess([*argv, "--reload"], env, lambda line: "ready:" in line)
    try:
        assert supervisor.ready.wait(60), "".join(supervisor.lines[-20:])
        # While the old process has withdrawn and the new one has not yet announced itself,
        # a two-way call waits for it (as callers do through rolling restarts).
        settings = Settings(
            bootstrap_servers=env["KOURIER_BOOTSTRAP_SERVERS"],
            topic_prefix=prefix,
            wait_for_instance=20,
        )
        async with Client(settings) as client:
            assert await version_of(client) == 1
            in_flight = asyncio.create_task(version_of(client, "/slow", timeout=30))
            started = package / "slow-started"
            async with asyncio.timeout(10):
                while not started.exists():  # noqa: ASYNC110  (another process writes it)
                    await asyncio.sleep(0.02)
            write_app(package, 2)
            assert await in_flight == 1, "the call in flight was not drained on the old code"
            async with asyncio.timeout(60):
                while await version_of(client, timeout=30) != 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
        log = "".join(supervisor.lines)
        assert re.search(r"main\.py changed: restarting the service", log), log
        assert "draining in-flight requests" in log, log
        pids = [int(p) for p in re.findall(r"started the service \(pid (\d+)\)", log)]
        assert len(pids) == 2, log
        supervisor.process.send_signal(signal.SIGTERM)
        assert supervisor.process.wait(30) == 0, "".join(supervisor.lines[-20:])
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        stop(supervisor)
        assert supervisor.process.stderr is not None
        supervisor.process.stderr.close()


def test_reload_with_several_workers_is_refused() -> None:
    """--reload with --workers 2 exits 2 and says why, before connecting to anything."""
    result = subprocess.run(
        [sys.executable, "-m", "kourier", "run", "tests.e2e.app:app", "--reload", "--workers", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--reload runs one worker: drop --workers" in result.stderr


@pytest.mark.kafka
@pytest.mark.e2e
@pytest.mark.timeout(180)
async def test_a_broken_edit_is_reported_and_the_next_edit_serves_again(tmp_path: Path) -> None:
    """A file that no longer imports stops the service with a logged exit; fixing it
    starts the service again, without restarting the supervisor."""
    package = tmp_path / "brokensvc"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "main.py").write_text("def broken(:\n")
    prefix = f"reload{uuid.uuid4().hex[:8]}."
    env = {
        **os.environ,
        "KOURIER_BOOTSTRAP_SERVERS": kafka_bootstrap(),
        "KOURIER_TOPIC_PREFIX": prefix,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    argv = [sys.executable, "-m", "kourier", "run", "brokensvc.main:app", "--service", "reloaded"]
    supervisor = LoggedProcess(
        [*argv, "--reload"], env, lambda line: "starts again when a file changes" in line
    )
    try:
        assert supervisor.ready.wait(60), "".join(supervisor.lines[-20:])
        assert supervisor.running, "the supervisor ended with its service"
        write_app(package, 3)
        # While the old process has withdrawn and the new one has not yet announced itself,
        # a two-way call waits for it (as callers do through rolling restarts).
        settings = Settings(
            bootstrap_servers=env["KOURIER_BOOTSTRAP_SERVERS"],
            topic_prefix=prefix,
            wait_for_instance=20,
        )
        async with asyncio.timeout(60):
            while not any("ready:" in line for line in supervisor.lines):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        async with Client(settings) as client:
            assert await version_of(client) == 3
        assert "SyntaxError" in "".join(supervisor.lines)
        supervisor.process.send_signal(signal.SIGTERM)
        assert supervisor.process.wait(30) == 0, "".join(supervisor.lines[-20:])
    finally:
        stop(supervisor)
        assert supervisor.process.stderr is not None
        supervisor.process.stderr.close()
