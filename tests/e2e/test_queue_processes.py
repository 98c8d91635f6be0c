"""End to end in queue mode: real `kourier run --queue` processes on a 1-partition topic.

Every service here runs on confluent-kafka (aiokafka has no share consumer). Each test
sets its share group's lock to Kafka's minimum (15 s) before the first instance starts,
so a record held by a killed instance comes back within 15 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kourier import Client, Settings
from tests.conftest import kafka_bootstrap
from tests.e2e.test_processes import ServiceProcess
from tests.faults.harness import dead_letters, handled, service_stats, wait_handled
from tests.processes import ROOT
from tests.share_groups import configure_share_group

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(300)]

#: Kafka's smallest record lock (``group.share.min.record.lock.duration.ms``).
LOCK_MS = 15_000
#: The delivery limit. Counts rise faster than crashes: when a process dies, records its
#: members' fetches in flight had acquired count a delivery too, and records held beside
#: the killer die with it (runs here saw a count go up by 3 over one crash). At Kafka's
#: default (5) innocent records held beside the killer reached the limit with it.
LIMIT = 6


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A queue-mode service's environment on fresh topics, its share group configured."""
    prefix = f"q{uuid.uuid4().hex[:8]}."
    configure_share_group(
        kafka_bootstrap(),
        f"{prefix}e2e",
        share_record_lock_duration_ms=str(LOCK_MS),
        share_delivery_count_limit=str(LIMIT),
    )
    return {
        **os.environ,
        "KOURIER_BOOTSTRAP_SERVERS": kafka_bootstrap(),
        "KOURIER_TOPIC_PREFIX": prefix,
        "KOURIER_PARTITIONS": "1",
        "KOURIER_KAFKA_CLIENT": "confluent",
        "KOURIER_E2E_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }


def _start(env: dict[str, str], count: int) -> list[ServiceProcess]:
    started = [ServiceProcess(env, "--queue") for _ in range(count)]
    for service in started:
        assert service.ready.wait(90), "".join(service.lines[-30:])
    return started


@pytest.fixture
def instances() -> Iterator[list[ServiceProcess]]:
    """The service processes a test starts (in this list); all stopped at the end."""
    running: list[ServiceProcess] = []
    try:
        yield running
    finally:
        for service in running:
            service.stop()


def _settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


def test_three_instances_on_one_partition_share_every_call_shape(
    env: dict[str, str], instances: list[ServiceProcess], tmp_path: Path
) -> None:
    """Three queue-mode instances on a 1-partition topic each handle a share; two-way,
    streamed and one-way calls all work."""
    instances += _start(env, 3)
    caller = subprocess.run(
        [sys.executable, "-m", "tests.e2e.caller", "alpha", "600", "6"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert caller.returncode == 0, caller.stderr[-3000:]
    report = json.loads(caller.stdout)
    assert report["failed"] == [] and report["wrong"] == []
    assert report["two_way"] == 240 and report["streamed"] == 120
    one_way = set(report["one_way"])
    assert len(one_way) == 240
    counts = wait_handled(tmp_path, one_way, timeout=60)
    assert one_way <= counts.keys()
    for service in instances:
        assert service.stop() == 0
    shares = [service_stats(service).get("handled", 0) for service in instances]
    assert all(share > 0 for share in shares), shares
    assert sum(shares) >= 600


def test_a_slow_request_holds_back_neither_handling_nor_acknowledgement(
    env: dict[str, str], instances: list[ServiceProcess], tmp_path: Path
) -> None:
    """With one instance busy on an 8 s request, later requests are answered at once and
    acknowledged on their own: after a SIGKILL, only the slow one runs again."""
    instances += _start(env, 1)

    async def scenario() -> tuple[float, str]:
        async with Client(_settings(env)) as client:
            slow = asyncio.create_task(
                client.request("e2e", "PUT", "/work/slow", params={"ms": 8000}, timeout=90)
            )
            await asyncio.to_thread(wait_handled, tmp_path, ["slow"], 30)
            started = time.monotonic()
            for i in range(20):
                fast = await client.request("e2e", "PUT", f"/work/fast-{i}", timeout=10)
                assert fast.status_code == 200
            fast_took = time.monotonic() - started
            assert not slow.done()
            await asyncio.sleep(1.0)  # the accepts of the last fast ones reach the broker
            instances[0].process.kill()
            instances.extend(_start(env, 1))  # the slow record comes back to it
            answer = await slow
            return fast_took, answer.json()["id"]

    fast_took, slow_id = asyncio.run(scenario())
    assert fast_took < 6.0
    assert slow_id == "slow"
    counts = handled(tmp_path)
    assert counts["slow"] == 2
    assert all(counts[f"fast-{i}"] == 1 for i in range(20)), counts


@pytest.mark.timeout(420)
@pytest.mark.skipif(
    os.environ.get("KOURIER_QUEUE_POISON_TEST") != "1",
    reason="flaky for reasons of librdkafka's preview share consumer and the broker, not "
    "kourier's (docs/reliability.md, 'Queue mode rests on a preview client'): passed 2 of "
    "its last 3 runs; run it with KOURIER_QUEUE_POISON_TEST=1",
)
def test_a_request_that_kills_its_instance_is_dead_lettered_at_the_delivery_limit(
    env: dict[str, str], instances: list[ServiceProcess], tmp_path: Path
) -> None:
    """A one-way message whose handler SIGKILLs its process is dead-lettered at the
    group's delivery limit while the test restarts the dead instances; every other call
    is answered."""
    instances += _start(env, 2)
    restarts = 0
    dead: list[ServiceProcess] = []  # their logs explain a failure
    poison = f"poison-{uuid.uuid4().hex[:6]}"

    def supervise() -> None:
        """Restart every instance that died, as a process supervisor would."""
        nonlocal restarts
        for index, service in enumerate(instances):
            if not service.running:
                service.stop()
                dead.append(service)
                instances[index] = ServiceProcess(env, "--queue")
                restarts += 1

    poison_id = ""

    async def scenario() -> list[str]:
        nonlocal poison_id
        errors: list[str] = []
        async with Client(_settings(env)) as client:

            async def call(i: int) -> None:
                try:
                    response = await client.request(
                        "e2e", "PUT", f"/work/other-{i}", params={"ms": 20}, timeout=120
                    )
                    if response.json()["id"] != f"other-{i}":
                        errors.append(f"other-{i}: wrong answer")
                except Exception as exc:
                    errors.append(f"other-{i}: {exc!r}")

            # Both instances' members report ready when they have joined, which can be
            # seconds before the group gives them work; calls sent meanwhile pile up and
            # one member takes them all at once, beside the poison. Start when served.
            for instance in range(2):
                await client.request("e2e", "PUT", f"/work/warm-{instance}", timeout=60)
            calls = []
            for i in range(40):
                if i == 5:
                    poison_id = await client.send("e2e", "POST", "/crash", json={"id": poison})
                calls.append(asyncio.create_task(call(i)))
                await asyncio.sleep(0.25)
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                await asyncio.to_thread(supervise)
                if not [t for t in calls if not t.done()] and any(
                    d["request_id"] == poison_id for d in await asyncio.to_thread(dead_letters, env)
                ):
                    break
                await asyncio.sleep(1.0)
            await asyncio.gather(*calls)
        return errors

    errors = asyncio.run(scenario())
    assert errors == [], "".join(line for s in dead + instances for line in s.lines[-40:])
    letters = [d for d in dead_letters(env) if d["request_id"] == poison_id]
    assert len(letters) == 1, (handled(tmp_path), restarts)
    assert "delivery limit" in str(letters[0]["reason"])
    counts = handled(tmp_path)
    # It killed an instance on deliveries before the last (at most LIMIT - 1 of them).
    crashes = counts[f"crash:{poison}"]
    assert 1 <= crashes <= LIMIT - 1
    assert restarts >= crashes - 1  # the last dead instance may not be restarted yet
