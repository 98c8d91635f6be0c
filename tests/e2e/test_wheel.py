"""The built wheel, installed alone into a fresh virtualenv, tests a user's app with pytest."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import kafka_bootstrap
from tests.processes import ROOT

APP = '''
"""A service with no framework: kourier serves any ASGI app."""
import json


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/fail":
        raise RuntimeError("failed on purpose")
    reply = json.dumps({"path": scope["path"], "got": json.loads(body or b"null")}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": reply})
'''

TEST = """
import pytest

from kourier.testing import serve_app
from app import app


async def test_two_way_over_httpx_and_the_native_client(kourier_service):
    echo = await kourier_service(app, "echo")
    response = await echo.http.post("/hello", json={"n": 1})
    assert response.json() == {"path": "/hello", "got": {"n": 1}}
    native = await echo.client.request("echo", "GET", "/x")
    assert native.json() == {"path": "/x", "got": None}


async def test_one_way_and_the_apps_exception(kourier_service, kourier_client):
    echo = await kourier_service(app, "echo")
    await kourier_client.send("echo", "POST", "/note", json="hi")
    await echo.wait_until(lambda: echo.messages, timeout=20)
    assert echo.messages[0].body == b'"hi"'
    with pytest.raises(RuntimeError, match="on purpose"):
        await echo.client.request("echo", "GET", "/fail")


async def test_serve_app_on_the_tests_settings(kourier_settings):
    async with serve_app(app, "direct", kourier_settings) as direct:
        assert (await direct.http.get("/d")).status_code == 200
"""

PYPROJECT = """
[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
"""


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.kafka
@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_the_wheel_alone_runs_a_users_tests_in_memory_and_on_kafka(tmp_path: Path) -> None:
    """pip installs the wheel with its testing extra into a new virtualenv; the plugin and
    kourier.testing run a user's tests there, in memory and with --kourier-kafka."""
    servers = kafka_bootstrap()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KOURIER_", "PYTHON"))}
    dist = tmp_path / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        tmp_path,
        env,
        timeout=300,
    )
    [wheel] = dist.glob("kourier-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, env, timeout=120)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", f"{wheel}[testing]"], tmp_path, env, timeout=300)
    project = tmp_path / "project"
    project.mkdir()
    (project / "app.py").write_text(textwrap.dedent(APP))
    (project / "test_app.py").write_text(textwrap.dedent(TEST))
    (project / "pyproject.toml").write_text(PYPROJECT)
    pytest_argv = [python, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error", "-q"]
    in_memory = run(pytest_argv, project, env, timeout=120)
    assert "3 passed" in in_memory, in_memory
    on_kafka = run(
        [*pytest_argv, "--kourier-kafka"],
        project,
        {**env, "KOURIER_BOOTSTRAP_SERVERS": servers},
        timeout=180,
    )
    assert "3 passed" in on_kafka, on_kafka
    installed = run([python, "-m", "pip", "list", "--format=freeze"], project, env, timeout=60)
    assert "kourier==" in installed and "fastapi" not in installed.lower(), installed
