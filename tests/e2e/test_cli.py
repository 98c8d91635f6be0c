"""The `kourier` command as a user runs it: subprocesses against the real broker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import kafka_bootstrap
from tests.e2e.test_processes import ServiceProcess
from tests.processes import ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(180)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        **os.environ,
        "KOURIER_BOOTSTRAP_SERVERS": kafka_bootstrap(),
        "KOURIER_TOPIC_PREFIX": f"cli{uuid.uuid4().hex[:8]}.",
        "KOURIER_E2E_DIR": str(tmp_path_factory.mktemp("cli")),
        "KOURIER_RETRY_BACKOFF": "0.05",
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture(scope="module")
def http_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def health_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def service(env: dict[str, str], http_port: int, health_port: int) -> Iterator[ServiceProcess]:
    process = ServiceProcess(env, "--http", str(http_port), "--health-port", str(health_port))
    try:
        assert process.ready.wait(60), "".join(process.lines[-20:])
        yield process
    finally:
        process.stop()


def kourier(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kourier", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_request_prints_the_json_reply(service: ServiceProcess, env: dict[str, str]) -> None:
    """`kourier request` sends JSON and pretty-prints the JSON it gets back."""
    result = kourier(env, "request", "e2e", "POST", "/echo", "--json", '{"a": 1}', "-i")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("status: 200\n")
    body = result.stdout.split("\n\n", 1)[1]
    assert json.loads(body)["echo"] == {"a": 1}
    assert '\n  "echo"' in body, "pretty-printed"


def test_request_stream_prints_items_as_they_come(
    service: ServiceProcess, env: dict[str, str]
) -> None:
    """`--stream` prints each NDJSON item of a streamed reply."""
    result = kourier(env, "request", "e2e", "GET", "/items?n=3&tag=t", "--stream")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"tag": "t", "i": i} for i in range(3)
    ]


def test_send_returns_the_request_id_and_the_handler_runs(
    service: ServiceProcess, env: dict[str, str]
) -> None:
    """`kourier send` prints the id once the broker has the message; the service handles it."""
    result = kourier(env, "send", "e2e", "POST", "/record", "--json", '{"id": "from-cli"}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sent: ")
    log_dir = Path(env["KOURIER_E2E_DIR"])
    for _ in range(100):
        handled = "".join(p.read_text() for p in log_dir.glob("handled-*.log"))
        if "from-cli" in handled:
            break
        time.sleep(0.1)
    assert "from-cli" in handled


def test_fail_gives_exit_22_on_an_error_status(
    service: ServiceProcess, env: dict[str, str]
) -> None:
    """With --fail, a 404 exits 22 as curl does; without it, 0."""
    assert kourier(env, "request", "e2e", "GET", "/nowhere", "--fail").returncode == 22
    assert kourier(env, "request", "e2e", "GET", "/nowhere").returncode == 0


def test_a_timeout_exits_28_with_one_line(service: ServiceProcess, env: dict[str, str]) -> None:
    """A reply that does not come in time: curl's exit code and no traceback."""
    result = kourier(env, "request", "e2e", "POST", "/work/slow?ms=3000", "--timeout", "1")
    assert result.returncode == 28
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_are_one_clear_line(env: dict[str, str]) -> None:
    """Bad JSON, a bad app path and a bad setting each print one line and exit 2."""
    bad_json = kourier(env, "request", "e2e", "POST", "/echo", "--json", "{nope")
    assert bad_json.returncode == 2 and "--json is not valid JSON" in bad_json.stderr
    bad_app = kourier(env, "run", "no_such_module:app")
    assert bad_app.returncode == 2 and "could not import module" in bad_app.stderr
    bad_setting = kourier({**env, "KOURIER_CONCURRENCY": "lots"}, "send", "e2e", "GET", "/")
    assert bad_setting.returncode == 2 and "concurrency" in bad_setting.stderr
    bad_hooks = kourier(env, "run", "tests.e2e.app:app", "--hooks", "tests.e2e.hooks:nope")
    assert bad_hooks.returncode == 2 and "has no attribute 'nope'" in bad_hooks.stderr
    for result in (bad_json, bad_app, bad_setting, bad_hooks):
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr


def test_an_unreachable_broker_fails_fast(env: dict[str, str]) -> None:
    """A closed broker port gives exit 7 and a one-line error, not a hang."""
    closed = {**env, "KOURIER_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    result = kourier(closed, "request", "e2e", "GET", "/", timeout=60)
    assert result.returncode == 7, result.stderr
    assert "Traceback" not in result.stderr


def test_the_same_app_answers_http_during_a_migration(
    service: ServiceProcess, http_port: int
) -> None:
    """`kourier run --http PORT` serves the app over plain HTTP as well."""
    response = httpx.post(f"http://127.0.0.1:{http_port}/echo", json={"b": 2}, timeout=10)
    assert response.status_code == 200
    assert response.json()["echo"] == {"b": 2}


def test_topics_ensure_and_describe(env: dict[str, str]) -> None:
    """`topics ensure` creates a service's topics and the shared reply and registry
    topics; `describe` shows their partitions."""
    assert kourier(env, "topics", "describe", "fresh").returncode == 1
    created = kourier({**env, "KOURIER_PARTITIONS": "2"}, "topics", "ensure", "fresh")
    assert created.returncode == 0, created.stderr
    prefix = env["KOURIER_TOPIC_PREFIX"]
    assert f"{prefix}fresh.requests: 2 partitions, replication factor 1" in created.stdout
    assert f"{prefix}fresh.dead-letters: 2 partitions" in created.stdout
    assert f"{prefix}registry: 1 partitions" in created.stdout  # the shared registry
    described = kourier(env, "topics", "describe", "fresh")
    assert described.returncode == 0 and described.stdout == created.stdout


def test_dead_letters_list_and_replay(service: ServiceProcess, env: dict[str, str]) -> None:
    """A failing one-way message is dead-lettered, listed, and replayed by position."""
    sent = kourier(env, "send", "e2e", "POST", "/fail", "--json", "{}")
    request_id = sent.stdout.split()[-1]
    letters: list[dict[str, object]] = []
    for _ in range(100):
        listed = kourier(env, "dead-letters", "list", "e2e", "--json")
        letters = [json.loads(line) for line in listed.stdout.splitlines()]
        if letters:
            break
    [letter] = letters
    assert letter["request_id"] == request_id
    assert letter["attempts"] == 3
    assert "status 500" in str(letter["reason"])
    replayed = kourier(env, "dead-letters", "replay", "e2e", "--position", str(letter["position"]))
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith("replayed 1 dead letters")
    for _ in range(100):
        listed = kourier(env, "dead-letters", "list", "e2e", "--json")
        if len(listed.stdout.splitlines()) == 2:
            break
    assert len(listed.stdout.splitlines()) == 2, "the replayed message failed again"
    nothing = kourier(env, "dead-letters", "replay", "e2e")
    assert nothing.returncode == 2 and "--position" in nothing.stderr


def test_probes_and_metrics_of_a_running_service(
    service: ServiceProcess, env: dict[str, str], health_port: int
) -> None:
    """/readyz and /livez answer 200, and /metrics counts the requests by route template."""
    base = f"http://127.0.0.1:{health_port}"
    for _ in range(3):
        assert kourier(env, "request", "e2e", "GET", "/items?n=1&tag=m").returncode == 0
    assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    assert httpx.get(f"{base}/livez", timeout=5).status_code == 200
    metrics = httpx.get(f"{base}/metrics", timeout=5).text
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("kourier_requests_total{") and 'route="/items"' in line
    )
    assert 'method="GET"' in line and 'status="200"' in line
    assert float(line.rsplit(" ", 1)[1]) >= 3
    assert "kourier_consumer_lag{" in metrics
    assert "kourier_handler_seconds_bucket{" in metrics


def two_free_ports() -> int:
    """A port P such that P and P + 1 are free now (the probes of two workers)."""
    port = free_port()
    while True:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                port = free_port()


def test_workers_share_the_group_and_stop_together(env: dict[str, str]) -> None:
    """`--workers 2` runs two members with probes on P and P+1; SIGTERM stops both."""
    port = two_free_ports()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kourier",
            "run",
            "tests.e2e.app:app",
            "--service",
            "workers",
            "--workers",
            "2",
            "--health-port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for health in (port, port + 1):
            for _ in range(600):
                try:
                    if httpx.get(f"http://127.0.0.1:{health}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            else:
                raise AssertionError(f"worker on health port {health} never became ready")
        result = kourier(env, "request", "workers", "POST", "/echo", "--json", '{"w": 1}')
        assert result.returncode == 0, result.stderr
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0


def test_hooks_reach_every_worker_and_see_a_request_through(
    env: dict[str, str], tmp_path: Path
) -> None:
    """`--hooks` with `--workers 2`: both start, one sees the request and its reply, and
    both stop after SIGTERM."""
    log = tmp_path / "hooks.log"
    output = tmp_path / "run.log"

    def events(name: str) -> list[list[str]]:
        lines = log.read_text().splitlines() if log.exists() else []
        return [line.split(" ", 2) for line in lines if line.split(" ")[1] == name]

    run = ["run", "tests.e2e.app:app", "--service", "hooked", "--workers", "2"]
    with output.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "kourier", *run, "--hooks", "tests.e2e.hooks:hooks"],
            cwd=ROOT,
            env={**env, "KOURIER_E2E_HOOKS_LOG": str(log)},
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 60
        while len(events("start")) < 2 and process.poll() is None:
            assert time.monotonic() < deadline, output.read_text()[-2000:]
            time.sleep(0.05)
        assert process.poll() is None, output.read_text()[-2000:]
        tag = uuid.uuid4().hex[:8]
        result = kourier(env, "request", "hooked", "GET", f"/items?n=1&tag={tag}", timeout=30)
        assert result.returncode == 0, result.stderr
    finally:
        process.terminate()
        code = process.wait(timeout=60)
    assert code == 0, output.read_text()[-2000:]
    starts = {pid for pid, *_ in events("start")}
    assert len(starts) == 2, "each worker ran the start hook"
    assert [detail for _, _, detail in events("request")] == [f"GET /items?n=1&tag={tag}"]
    assert [detail for _, _, detail in events("reply")] == [f"GET /items?n=1&tag={tag} 200"]
    assert {pid for pid, *_ in events("stop")} == starts
    lines = log.read_text().splitlines()
    assert all(line.split(" ")[1] == "stop" for line in lines[-2:]), "stop comes last"


def test_a_worker_that_dies_stops_the_others_with_its_code(env: dict[str, str]) -> None:
    """With `--workers 2`, a worker killed outright makes the run log which worker ended
    and how, stop the other worker, and exit as a shell reports a SIGKILL (137)."""
    port = two_free_ports()
    run = ["run", "tests.e2e.app:app", "--service", "dying-worker", "--workers", "2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "kourier", *run, "--health-port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for health in (port, port + 1):
            deadline = time.monotonic() + 60
            while True:
                assert time.monotonic() < deadline, f"no worker ready on port {health}"
                assert process.poll() is None, process.communicate()[1][-2000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{health}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        assert len(children) == 2, children
        os.kill(int(children[1]), signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGKILL, stderr[-2000:]
    assert "worker 2 of 2 was killed by SIGKILL without being asked to stop" in stderr
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)
