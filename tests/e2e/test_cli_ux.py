"""The CLI's finish as a user meets it: --version, options after the command, the access
log, --root-path, the worker's name in its lines, dead letters' bodies and replay marks."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import kafka_bootstrap
from tests.e2e.test_cli import kourier
from tests.e2e.test_processes import ServiceProcess
from tests.processes import ROOT, LoggedProcess

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(180)]

UNREACHABLE = "127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def env(tmp_path: object) -> dict[str, str]:
    return {
        **os.environ,
        "KOURIER_BOOTSTRAP_SERVERS": kafka_bootstrap(),
        "KOURIER_TOPIC_PREFIX": f"ux{uuid.uuid4().hex[:8]}.",
        "KOURIER_PARTITIONS": "2",
        "KOURIER_E2E_DIR": str(tmp_path),
        "KOURIER_RETRY_BACKOFF": "0.05",
        "PYTHONPATH": str(ROOT),
    }


def run(env: dict[str, str], *args: str) -> LoggedProcess:
    return LoggedProcess(
        [sys.executable, "-m", "kourier", "run", *args],
        env,
        lambda line: "ready: service" in line,
    )


@pytest.fixture
def processes() -> Iterator[list[LoggedProcess]]:
    started: list[LoggedProcess] = []
    yield started
    for process in started:
        if process.running:
            process.process.terminate()
        try:
            process.process.wait(timeout=30)
        except Exception:
            process.process.kill()
            process.process.wait()
        process.join_reader()
        if process.process.stderr is not None:
            process.process.stderr.close()


def wait_for(process: LoggedProcess, wanted: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not any(wanted in line for line in process.lines):
        assert time.monotonic() < deadline, f"no {wanted!r} in:\n" + "".join(process.lines[-30:])
        time.sleep(0.05)


def test_version(env: dict[str, str]) -> None:
    """kourier --version prints the version and exits 0."""
    result = kourier(env, "--version")
    assert result.returncode == 0
    assert result.stdout.startswith("kourier ")


def test_root_path_options_after_the_command_and_the_access_log(
    env: dict[str, str], processes: list[LoggedProcess]
) -> None:
    """A service run with --root-path gives the app that root path and a client; a request
    whose --bootstrap-servers comes after the command reaches it; the access log has it."""
    service = run(env, "tests.scope_app:app", "--service", "scope", "--root-path", "/api")
    processes.append(service)
    assert service.ready.wait(60), "".join(service.lines[-20:])
    # The environment names a broker nobody runs: only the option after the command works.
    wrong = {**env, "KOURIER_BOOTSTRAP_SERVERS": UNREACHABLE}
    result = kourier(
        wrong,
        "request",
        "scope",
        "GET",
        "/where/x?a=1",
        "--bootstrap-servers",
        env["KOURIER_BOOTSTRAP_SERVERS"],
        "--log-level",
        "warning",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("{"), (result.stdout, result.stderr)
    seen = json.loads(result.stdout)
    assert (seen["root_path"], seen["path"], seen["query"]) == ("/api", "/api/where/x", "a=1")
    assert seen["link"] == "http://scope/api/where/x"
    assert seen["client_host_is_text"] and seen["client_port_is_int"]
    wait_for(service, 'scope "GET /where/x?a=1" 200 ')
    [line] = [line for line in service.lines if '"GET /where/x?a=1"' in line]
    assert "kourier.access" in line and "request_id=" in line and "ms " in line


def test_workers_name_themselves_and_log_topics_once(
    env: dict[str, str], processes: list[LoggedProcess]
) -> None:
    """With --workers 2 each line says which worker wrote it, the topics are logged
    created once in all, and --no-access-log leaves requests out of the log."""
    service = run(
        env, "tests.scope_app:app", "--service", "pair", "--workers", "2", "--no-access-log"
    )
    processes.append(service)
    wait_for(service, "[worker 1]", 60)
    wait_for(service, "[worker 2]", 60)
    wait_for(service, "ready: service", 60)
    deadline = time.monotonic() + 60
    while sum("ready: service" in line for line in service.lines) < 2:
        assert time.monotonic() < deadline, "".join(service.lines[-30:])
        time.sleep(0.05)
    result = kourier(env, "request", "pair", "GET", "/where/y")
    assert result.returncode == 0, result.stderr
    prefix = env["KOURIER_TOPIC_PREFIX"]
    created = [
        name
        for line in service.lines
        if "created topics " in line
        for name in line.split("created topics ", 1)[1].strip().split(", ")
    ]
    for topic in (f"{prefix}pair.requests", f"{prefix}pair.dead-letters"):
        assert created.count(topic) == 1, created
    time.sleep(0.5)
    assert not any('"GET /where/y"' in line for line in service.lines)
    ready = [line for line in service.lines if "ready: service" in line]
    assert {"[worker 1]" in line for line in ready} == {True, False}


def test_dead_letters_show_their_body_and_their_replay(
    env: dict[str, str], processes: list[LoggedProcess]
) -> None:
    """list shows each letter's body (cut unless --full) and marks the ones replayed;
    replay --all skips those."""
    service = ServiceProcess(env)
    processes.append(service)
    assert service.ready.wait(60), "".join(service.lines[-20:])
    payload = json.dumps({"id": "dl-1", "note": "n" * 300})
    sent = kourier(env, "send", "e2e", "POST", "/fail", "--json", payload)
    assert sent.returncode == 0, sent.stderr
    for _ in range(100):
        listed = kourier(env, "dead-letters", "list", "e2e")
        if "1 dead letters" in listed.stdout:
            break
    lines = listed.stdout.splitlines()
    assert lines[1].startswith('    body: {"id": "dl-1"') and "--full shows all" in lines[1]
    assert "[replayed]" not in listed.stdout
    full = kourier(env, "dead-letters", "list", "e2e", "--full")
    assert f"    body: {payload}" in full.stdout.splitlines()
    position = lines[0].split()[0]
    replayed = kourier(env, "dead-letters", "replay", "e2e", "--position", position)
    assert replayed.returncode == 0, replayed.stderr
    for _ in range(100):  # the copy fails again: a second letter comes
        listed = kourier(env, "dead-letters", "list", "e2e", "--json")
        letters = [json.loads(line) for line in listed.stdout.splitlines()]
        if len(letters) == 2:
            break
    assert {letter["position"]: letter["replayed"] for letter in letters}[position] is True
    assert sorted(letter["replayed"] for letter in letters) == [False, True]
    text = kourier(env, "dead-letters", "list", "e2e").stdout
    assert f"{position}  POST /fail" in text and "[replayed]" in text
    assert "2 dead letters (1 replayed)" in text
    again = kourier(env, "dead-letters", "replay", "e2e", "--all")
    assert again.returncode == 0, again.stderr
    assert "skipping 1 dead letters replayed before" in again.stdout
    assert "replayed 1 dead letters" in again.stdout


def test_a_misspelt_variable_is_named_at_start(env: dict[str, str]) -> None:
    """A misspelt KOURIER_* variable is warned about once, naming the right one."""
    result = kourier({**env, "KOURIER_PARTITONS": "3"}, "topics", "describe", "nosuch")
    warnings = [line for line in result.stderr.splitlines() if "KOURIER_PARTITONS" in line]
    assert len(warnings) == 1, result.stderr
    assert "did you mean KOURIER_PARTITIONS?" in warnings[0]


def test_contradictory_settings_stop_the_command(env: dict[str, str]) -> None:
    """A SASL mechanism with PLAINTEXT stops the command with exit 2, naming both."""
    result = kourier({**env, "KOURIER_SASL_MECHANISM": "PLAIN"}, "topics", "describe", "x")
    assert result.returncode == 2
    assert "sasl_mechanism: is set but security_protocol is PLAINTEXT" in result.stderr
    assert "Traceback" not in result.stderr
