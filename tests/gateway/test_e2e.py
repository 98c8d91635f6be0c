"""End to end: `kourier gateway` and `kourier run` processes on the real broker, called
over plain HTTP (httpx), and the docs page in headless Chromium.

Two gateways run: ``listed`` names its services (``--service``: the docs page lists
them even without a service registry), ``open`` names none, so that an unknown service
or one without a live instance is told apart by the client's own fail-fast checks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import kafka_bootstrap
from tests.e2e.test_cli import free_port
from tests.processes import ROOT, LoggedProcess

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(240)]


def kourier(*args: str) -> list[str]:
    return [sys.executable, "-m", "kourier", *args]


def stop(process: LoggedProcess) -> None:
    if process.running:
        process.process.terminate()
    try:
        process.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.process.kill()
        process.process.wait()
    process.join_reader()
    if process.process.stderr is not None:
        process.process.stderr.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="module")
def env(folder: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KOURIER_BOOTSTRAP_SERVERS": kafka_bootstrap(),
        "KOURIER_TOPIC_PREFIX": f"gw{uuid.uuid4().hex[:8]}.",
        "KOURIER_PARTITIONS": "2",
        "KOURIER_GATEWAY_DIR": str(folder),
        "PYTHONPATH": str(ROOT),
    }


def service(env: dict[str, str], name: str) -> LoggedProcess:
    return LoggedProcess(
        kourier("run", "tests.gateway.app:app", "--service", name),
        env,
        lambda line: "ready: service" in line,
    )


def gateway(env: dict[str, str], port: int, *options: str) -> LoggedProcess:
    return LoggedProcess(
        kourier("gateway", "--port", str(port), *options),
        env,
        lambda line: "ready: gateway" in line,
    )


@pytest.fixture(scope="module")
def processes(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Services alpha and beta, and the two gateways; yields the gateways' base URLs."""
    listed_port, open_port = free_port(), free_port()
    started = [
        service(env, "alpha"),
        service(env, "beta"),
        gateway(env, listed_port, "--service", "alpha", "--service", "beta"),
        gateway(env, open_port),
    ]
    try:
        for process in started:
            assert process.ready.wait(90), "".join(process.lines[-20:])
        yield {"listed": f"http://127.0.0.1:{listed_port}", "open": f"http://127.0.0.1:{open_port}"}
    finally:
        for process in started:
            stop(process)


@pytest.fixture(scope="module")
def listed(processes: dict[str, str]) -> str:
    return processes["listed"]


def events(folder: Path) -> list[str]:
    return [line for path in folder.glob("events-*.log") for line in path.read_text().split("\n")]


def wait_for_event(folder: Path, line: str, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if line in events(folder):
            return True
        time.sleep(0.1)
    return False


def test_two_way_call_through_the_gateway(listed: str) -> None:
    """curl-like POST to /alpha/echo gets the service's JSON reply."""
    response = httpx.post(
        f"{listed}/alpha/echo?q=1",
        json={"name": "pen"},
        headers={"Idempotency-Key": "e2e-1"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["item"] == {"name": "pen", "quantity": 1}
    assert response.json()["idempotency_key"] == "e2e-1"
    assert response.json()["query"] == "q=1"


def test_streamed_reply_items_arrive_before_the_end(listed: str) -> None:
    """NDJSON lines reach the HTTP caller one by one, while the service still writes."""
    arrived: list[float] = []
    with httpx.stream("GET", f"{listed}/beta/items?n=4&delay=0.5", timeout=30) as response:
        assert response.status_code == 200
        assert response.headers.get("transfer-encoding") == "chunked"
        for line in response.iter_lines():
            if line:
                arrived.append(time.monotonic())
    assert len(arrived) == 4
    assert arrived[-1] - arrived[0] >= 1.2


def test_one_way_call_is_accepted_with_202(listed: str, folder: Path) -> None:
    """Prefer: respond-async gets 202 and a request id; the service then handles it."""
    mark = uuid.uuid4().hex
    response = httpx.post(
        f"{listed}/alpha/record",
        json={"id": mark},
        headers={"Prefer": "respond-async"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    assert response.headers["preference-applied"] == "respond-async"
    assert response.json()["request_id"]
    assert wait_for_event(folder, f"recorded {mark}")


def test_a_late_reply_is_a_504(listed: str) -> None:
    """A call still unanswered at X-Kourier-Timeout is a 504 problem."""
    response = httpx.get(
        f"{listed}/alpha/slow?tag=late&seconds=3",
        headers={"X-Kourier-Timeout": "0.5"},
        timeout=30,
    )
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"


def test_a_service_not_listed_is_a_404(listed: str) -> None:
    """A gateway limited to some services answers 404 for any other."""
    response = httpx.get(f"{listed}/gamma/items", timeout=30)
    assert response.status_code == 404
    assert response.json()["type"] == "urn:kourier:problem:service-not-found"


def test_an_unknown_service_is_a_404(processes: dict[str, str]) -> None:
    """Through a gateway open to every service, a name nobody serves is a 404 problem."""
    response = httpx.get(
        f"{processes['open']}/nosuch{uuid.uuid4().hex[:6]}/items",
        headers={"X-Kourier-Timeout": "3"},
        timeout=30,
    )
    assert response.status_code == 404, response.text


def test_a_service_with_no_live_instance_is_a_503(
    processes: dict[str, str], env: dict[str, str]
) -> None:
    """Once a service's only instance has stopped, calls to it are a 503 problem."""
    gone = service(env, "gamma")
    try:
        assert gone.ready.wait(90), "".join(gone.lines[-20:])
    finally:
        stop(gone)
    deadline = time.monotonic() + 30
    status = 0
    while time.monotonic() < deadline:  # the registry notices within its heartbeat expiry
        status = httpx.get(
            f"{processes['open']}/gamma/items", headers={"X-Kourier-Timeout": "3"}, timeout=30
        ).status_code
        if status == 503:
            break
        time.sleep(1)
    assert status == 503


def disconnect_after(url: str, seconds: float) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(url, timeout=httpx.Timeout(30, read=seconds))


def metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_caller_that_goes_away_cancels_the_call(listed: str) -> None:
    """The gateway closes the call when its HTTP caller disconnects (and counts it)."""
    before = metric(listed, "kourier_gateway_disconnects_total")
    disconnect_after(f"{listed}/alpha/slow?tag=left-{uuid.uuid4().hex[:6]}&seconds=20", 1.0)
    deadline = time.monotonic() + 10
    while metric(listed, "kourier_gateway_disconnects_total") == before:
        assert time.monotonic() < deadline, "the gateway did not notice the disconnect"
        time.sleep(0.1)
    assert metric(listed, "kourier_gateway_in_flight") == 0


def test_a_caller_that_goes_away_cancels_the_handler(listed: str, folder: Path) -> None:
    """The service's handler is cancelled when the HTTP caller disconnects."""
    tag = f"cancel-{uuid.uuid4().hex[:6]}"
    disconnect_after(f"{listed}/alpha/slow?tag={tag}&seconds=20", 1.0)
    assert wait_for_event(folder, f"cancelled {tag}", seconds=10)


def test_probes(listed: str) -> None:
    """/livez and /readyz answer 200 once the gateway reaches Kafka."""
    assert httpx.get(f"{listed}/livez", timeout=10).status_code == 200
    assert httpx.get(f"{listed}/readyz", timeout=10).status_code == 200


CHROMIUM = shutil.which("chromium")
#: Headless, and nothing reaching outside this machine (it has no network).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Where the screenshot is kept after the run (build/ is ignored by git).
ARTIFACTS = ROOT / "build" / "test-artifacts"


def test_docs_page_in_chromium_lists_services_and_tries_a_call(listed: str, tmp_path: Path) -> None:
    """In headless Chromium the page lists both services and a "try it" call returns 200."""
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing: scripts/setup installs it")
        pytest.skip("chromium is not installed: run scripts/setup as root on Debian")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(f"{listed}/docs")
            names = page.locator("#services tr[data-service]").evaluate_all(
                "rows => rows.map(row => row.dataset.service)"
            )
            assert names == ["alpha", "beta"]
            operation = page.locator("#operations-default-echo_echo_post")
            operation.locator(".opblock-summary").click()
            operation.locator("button.execute").click()
            status = operation.locator(".live-responses-table tbody .response-col_status").first
            status.wait_for(timeout=30_000)
            assert status.inner_text().strip().startswith("200")
            body = operation.locator(".live-responses-table .microlight").first.inner_text()
            assert '"name": "string"' in body
            shot = tmp_path / "gateway-docs.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)


def test_services_describe_asyncapi_prints_a_valid_document(
    processes: dict[str, str], env: dict[str, str]
) -> None:
    """`kourier services describe alpha --asyncapi` fetches alpha's OpenAPI document over
    Kafka and prints an AsyncAPI 3.0 document that validates against the published schema;
    for an unknown service it exits 6."""
    from tests.gateway.test_docs import validate

    result = subprocess.run(
        kourier("services", "describe", "alpha", "--asyncapi"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    validate(document)
    assert document["asyncapi"].startswith("3.0")
    assert any("requests" in channel["address"] for channel in document["channels"].values())
    unknown = subprocess.run(
        kourier("services", "describe", "alpah", "--asyncapi"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 6, unknown.stderr
    assert "alpha" in unknown.stderr
