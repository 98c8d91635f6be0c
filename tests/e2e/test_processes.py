"""End to end: real `kourier run` processes and caller processes on a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import kafka_bootstrap
from tests.processes import ROOT, LoggedProcess

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(300)]


class ServiceProcess(LoggedProcess):
    """A `kourier run` process whose log is kept and scanned for readiness."""

    def __init__(self, env: dict[str, str], *extra: str) -> None:
        super().__init__(
            [
                sys.executable,
                "-m",
                "kourier",
                "run",
                "tests.e2e.app:app",
                "--service",
                "e2e",
                *extra,
            ],
            env,
            lambda line: "ready: service" in line,
        )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.join_reader()
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KOURIER_BOOTSTRAP_SERVERS": kafka_bootstrap(),
        "KOURIER_TOPIC_PREFIX": f"e2e{uuid.uuid4().hex[:8]}.",
        "KOURIER_PARTITIONS": "4",
        "KOURIER_E2E_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture
def services(env: dict[str, str]) -> Iterator[list[ServiceProcess]]:
    started = [ServiceProcess(env), ServiceProcess(env)]
    try:
        for service in started:
            assert service.ready.wait(60), "".join(service.lines[-20:])
        yield started
    finally:
        for service in started:
            service.stop()


def test_two_services_two_callers_2000_mixed_calls(
    services: list[ServiceProcess], env: dict[str, str], tmp_path: Path
) -> None:
    """Every caller gets exactly its own replies, every one-way message is handled."""
    per_caller = 1000
    callers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.caller", name, str(per_caller)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("alpha", "beta")
    ]
    reports = []
    for caller in callers:
        out, err = caller.communicate(timeout=180)
        assert caller.returncode == 0, err[-3000:]
        reports.append(json.loads(out))

    one_way_sent: set[str] = set()
    for report in reports:
        assert report["failed"] == [], report["failed"][:5]
        assert report["wrong"] == [], report["wrong"][:5]
        assert report["two_way"] == per_caller * 2 // 5
        assert report["streamed"] == per_caller // 5
        assert len(report["one_way"]) == per_caller * 2 // 5
        assert report["waiting_after"] == 0
        one_way_sent |= set(report["one_way"])

    handled: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        handled = [
            line for path in tmp_path.glob("handled-*.log") for line in path.read_text().split()
        ]
        if one_way_sent <= set(handled):
            break
        time.sleep(0.5)
    missing = one_way_sent - set(handled)
    assert not missing, f"{len(missing)} one-way messages never handled"
    assert len(list(tmp_path.glob("handled-*.log"))) >= 1
    for service in services:
        assert service.stop() == 0, "".join(service.lines[-20:])


def test_instances_come_and_go_under_load(
    services: list[ServiceProcess], env: dict[str, str], tmp_path: Path
) -> None:
    """A third instance joins and the first leaves (SIGTERM) mid-load: nothing is lost."""
    caller = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.caller", "gamma", "3000", "8"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    third = ServiceProcess(env)
    try:
        assert third.ready.wait(60), "".join(third.lines[-20:])
        assert caller.poll() is None, "the load ended before the instances changed"
        assert services[0].stop() == 0, "".join(services[0].lines[-20:])
        assert caller.poll() is None, "the load ended before the instances changed"
        out, err = caller.communicate(timeout=180)
    finally:
        third.stop()
    assert caller.returncode == 0, err[-3000:]
    report = json.loads(out)
    assert report["failed"] == [], report["failed"][:5]
    assert report["wrong"] == [], report["wrong"][:5]
    assert report["two_way"] + report["streamed"] + len(report["one_way"]) == 3000
    sent = set(report["one_way"])
    deadline = time.monotonic() + 60
    handled: set[str] = set()
    while time.monotonic() < deadline and not sent <= handled:
        handled = {
            line for path in tmp_path.glob("handled-*.log") for line in path.read_text().split()
        }
        time.sleep(0.5)
    assert sent <= handled, f"{len(sent - handled)} one-way messages never handled"
