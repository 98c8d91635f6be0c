"""The parts the fault tests share: private brokers, caller processes, handled logs.

A fault test runs real `kourier run` processes (``ServiceProcess`` from the e2e tests)
and a caller process (``tests/faults/load.py``) against a real broker, breaks something
in the middle of the load, and then checks the caller's report against the services'
handled logs (one file per service process, one id per line, written before the work).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.test_processes import ServiceProcess
from tests.processes import ROOT, LoggedProcess

KAFKA_SCRIPT = ROOT / "scripts" / "kafka"

#: Caller retries of the two-way calls in the fault tests: an attempt that has no answer
#: after 3 s is repeated with the same request id, up to 4 attempts in the call's 30 s.
FAULT_RETRY = {"attempts": 4, "attempt_timeout": 3.0, "backoff": 0.2}


def figures(test: str, values: dict[str, Any]) -> None:
    """Print a test's measured figures on one line (collect them with pytest -s)."""
    print(f"\nFIGURES {test} {json.dumps(values, sort_keys=True)}", flush=True)


# -- private brokers -----------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(nodes: int) -> int:
    """A base port P with P..P+nodes-1 and their controller ports (+10000) all free."""
    for _ in range(200):
        base = random.randrange(20000, 40000)
        ports = [base + i for i in range(nodes)] + [base + 10000 + i for i in range(nodes)]
        if all(_port_free(port) for port in ports):
            return base
    raise RuntimeError("no free ports for a private broker")


class PrivateBroker:
    """A broker of one test's own (scripts/kafka with its own KOURIER_KAFKA_DIR and port).

    Never the shared broker: the script's environment names neither the shared broker's
    address nor its runtime folder, so ``stop`` can only stop this one.
    """

    def __init__(self, folder: Path, nodes: int = 1) -> None:
        self.folder = folder
        self.nodes = nodes
        self.port = free_base_port(nodes)
        self.bootstrap = ""
        self.env = {
            name: value
            for name, value in os.environ.items()
            if name not in ("KOURIER_BOOTSTRAP_SERVERS", "KOURIER_KAFKA_PORT")
            and not name.startswith("KOURIER_TEST_")
        }
        self.env["KOURIER_KAFKA_DIR"] = str(folder)
        self.started = False
        #: Nodes killed and not started again (a test that failed mid-outage leaves some).
        self.down: set[int] = set()

    def _script(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(KAFKA_SCRIPT), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> float:
        """Start the broker and wait until it is ready; the seconds that took."""
        began = time.monotonic()
        self.started = True  # from here on, stop() must run even if start fails
        for _ in range(3):
            result = self._script("start", "--nodes", str(self.nodes), "--port", str(self.port))
            if "already in use" not in result.stderr:
                break
            self.port = free_base_port(self.nodes)  # taken since we looked: another one
        if result.returncode != 0:
            raise RuntimeError(f"private broker did not start:\n{result.stderr[-3000:]}")
        match = re.search(r"^KOURIER_BOOTSTRAP_SERVERS=(\S+)$", result.stdout, re.MULTILINE)
        assert match, result.stdout
        self.bootstrap = match.group(1).strip("'\"")
        return time.monotonic() - began

    def kill_node(self, node: int) -> None:
        self.down.add(node)
        result = self._script("kill-node", str(node), timeout=60)
        assert result.returncode == 0, result.stderr

    def start_node(self, node: int) -> float:
        """Restart a killed node on its data; the seconds until it was back."""
        began = time.monotonic()
        result = self._script("start-node", str(node))
        assert result.returncode == 0, result.stderr[-3000:]
        self.down.discard(node)
        return time.monotonic() - began

    def restore(self) -> None:
        """Start again every node a test killed and left down."""
        for node in sorted(self.down):
            self.start_node(node)

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        result = self._script("stop", timeout=120)
        if result.returncode != 0:
            print(f"stopping the private broker failed:\n{result.stderr[-2000:]}")


# -- processes -----------------------------------------------------------------------------


class CallerProcess(LoggedProcess):
    """A ``tests.faults.load`` process; ``ready`` is set once its client has started."""

    def __init__(self, env: dict[str, str], **options: Any) -> None:
        self.options = options
        super().__init__(
            [sys.executable, "-m", "tests.faults.load", json.dumps(options)],
            env,
            lambda line: line.strip() == "ready",
            capture_stdout=True,
        )

    def report(self, timeout: float) -> LoadReport:
        out, _ = self.process.communicate(timeout=timeout)
        self.join_reader()
        # A stuck load (tests.faults.load.watchdog) writes its threads and tasks: keep them.
        assert self.process.returncode == 0, "".join(self.lines[-200:])
        return LoadReport(json.loads(out))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@contextlib.contextmanager
def services(env: dict[str, str], count: int = 2) -> Iterator[list[ServiceProcess]]:
    """``count`` service processes, ready; every one stopped on the way out."""
    started = [ServiceProcess(env) for _ in range(count)]
    try:
        for service in started:
            assert service.ready.wait(90), "".join(service.lines[-30:])
        yield started
    finally:
        for service in started:
            service.stop()


def service_stats(service: ServiceProcess) -> dict[str, int]:
    """The counters a stopped service logged (``service 'e2e' stopped: ServiceStats(...)``)."""
    for line in reversed(service.lines):
        if "stopped: ServiceStats(" in line:
            return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.split("ServiceStats")[1])}
    return {}


# -- what the load did ---------------------------------------------------------------------


@dataclass
class LoadReport:
    raw: dict[str, Any]
    by_outcome: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.by_outcome = Counter((kind, outcome) for _, kind, outcome, *_ in self.calls)

    @property
    def calls(self) -> list[list[Any]]:
        return list(self.raw["calls"])

    def ids(self, kind: str, *outcomes: str) -> set[str]:
        return {c[0] for c in self.calls if c[1] == kind and (not outcomes or c[2] in outcomes)}

    def count(self, kind: str, outcome: str) -> int:
        return self.by_outcome[(kind, outcome)]

    def total(self, kind: str) -> int:
        return sum(n for (k, _), n in self.by_outcome.items() if k == kind)

    def summary(self) -> dict[str, Any]:
        """Outcome counts per kind, retries, and the longest successful two-way call."""
        ok = [c[4] - c[3] for c in self.calls if c[1] == "two-way" and c[2] == "ok"]
        return {
            "two_way": {o: n for (k, o), n in sorted(self.by_outcome.items()) if k == "two-way"},
            "one_way": {o: n for (k, o), n in sorted(self.by_outcome.items()) if k == "one-way"},
            "caller_retries": self.raw["retries"],
            "longest_two_way_ok_s": round(max(ok, default=0.0), 2),
            "failed_calls_started_between_s": self.failure_window(),
        }

    def started_after(self, seconds: float) -> list[list[Any]]:
        """The calls that started at least ``seconds`` after the load began."""
        return [c for c in self.calls if c[3] >= seconds]

    def failure_window(self) -> list[float]:
        """When the first and the last call that failed started (seconds into the load)."""
        starts = [c[3] for c in self.calls if c[2] not in ("ok", "acked")]
        return [min(starts), max(starts)] if starts else []

    def examples(self, outcome: str, n: int = 3) -> list[str]:
        return [f"{c[0]}: {c[5]}" for c in self.calls if c[2] == outcome][:n]


def check_outcomes(report: LoadReport, calls: int) -> None:
    """Every one of ``calls`` calls has an outcome, and one that says what happened: no
    wrong answer, no error other than ReplyTimeout or a refused publish, no waiter left."""
    assert report.total("two-way") == calls // 2, "a two-way call has no outcome"
    assert report.total("one-way") == calls - calls // 2, "a one-way call has no outcome"
    assert report.count("two-way", "wrong") == 0, report.examples("wrong")
    assert report.count("two-way", "error") + report.count("one-way", "error") == 0, (
        report.examples("error")
    )
    assert report.raw["waiting_after"] == 0
    assert report.raw["stop_error"] == "", report.raw["stop_error"]


def handled(folder: Path) -> Counter[str]:
    """How often each id was handled, over every service process's log."""
    counts: Counter[str] = Counter()
    for path in folder.glob("handled-*.log"):
        counts.update(path.read_text().split())
    return counts


def wait_handled(folder: Path, ids: Iterable[str], timeout: float) -> Counter[str]:
    """The handled counts once every id in ``ids`` was handled, or at ``timeout``."""
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    while True:
        counts = handled(folder)
        if wanted <= counts.keys() or time.monotonic() >= deadline:
            return counts
        time.sleep(0.5)


def twice(counts: Counter[str], ids: Iterable[str]) -> int:
    """How many of ``ids`` were handled more than once."""
    return sum(1 for i in ids if counts[i] > 1)


def kourier_cli(env: dict[str, str], *args: str, check: bool = True) -> str:
    """Run the `kourier` command; its standard output (with ``check``, it must exit 0)."""
    done = subprocess.run(
        [sys.executable, "-m", "kourier", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 or not check, done.stderr
    return done.stdout


def dead_letters(env: dict[str, str]) -> list[dict[str, Any]]:
    """The service's dead letters, as `kourier dead-letters list e2e --json` prints them."""
    listed = kourier_cli(env, "dead-letters", "list", "e2e", "--json")
    return [json.loads(line) for line in listed.splitlines()]
