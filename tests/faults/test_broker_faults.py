"""Fault injection on the broker side, on brokers of the tests' own (never the shared one).

A single-node broker is killed (SIGKILL) and restarted on its data under load, and again
while a poison message is being dead-lettered and a call is being retried; one node of a
three-node cluster (replication factor 3, min ISR 2) is killed under load. The services
and the callers are not restarted: they must find the broker again by themselves. A call
whose request the broker did not acknowledge may fail (``unacked``: the caller got a
PublishError); every acknowledged one-way message must be handled.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from kourier import Client, Settings
from tests.faults.conftest import MakeEnv
from tests.faults.harness import (
    FAULT_RETRY,
    CallerProcess,
    LoadReport,
    PrivateBroker,
    check_outcomes,
    dead_letters,
    figures,
    handled,
    kourier_cli,
    services,
    twice,
    wait_handled,
)

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(240)]

CALLS = 6000
#: Long enough for the load to go on after a restarted broker is back (start-node took
#: 13 to 16 s on the development machine).
SECONDS = 45.0
#: The cluster test has no restart to wait for.
CLUSTER_SECONDS = 30.0
FAULT_AT = 6.0
#: Calls that start this long after the broker is whole again must all succeed.
SETTLE = 3.0


def check_recovered(report: LoadReport, since: float) -> None:
    """Every call that started ``since`` seconds into the load or later succeeded."""
    later = report.started_after(since)
    assert len(later) > 100, "too little load after the broker came back"
    failed = [c for c in later if c[2] not in ("ok", "acked")]
    assert not failed, f"{len(failed)} calls failed after recovery, e.g. {failed[:3]}"


def test_single_broker_killed_and_restarted_under_load(
    private_broker: PrivateBroker, make_env: MakeEnv, tmp_path: Path
) -> None:
    """The only broker dies mid-load and comes back on its data: services and caller
    carry on without a restart, and no acknowledged one-way message is lost."""
    env = make_env(private_broker.bootstrap)
    began = time.monotonic()
    with services(env):
        caller = CallerProcess(
            env, name="o", count=CALLS, seconds=SECONDS, retry=FAULT_RETRY, timeout=30.0
        )
        try:
            assert caller.ready.wait(60), "".join(caller.lines[-20:])
            time.sleep(FAULT_AT)
            assert caller.running, "the load ended before the fault"
            private_broker.kill_node(1)
            killed_at = time.time()
            time.sleep(5.0)
            restart_s = private_broker.start_node(1)
            back_at = time.time()
            assert caller.running, "the load ended before the broker came back"
            report = caller.report(timeout=150)
        finally:
            caller.kill()
        acked = report.ids("one-way", "acked")
        wait_handled(tmp_path, acked, timeout=60)
    counts = handled(tmp_path)
    start = report.raw["started_at"]
    recovered_from = back_at - start + SETTLE
    figures(
        "broker-restart",
        {
            **report.summary(),
            "killed_at_s": round(killed_at - start, 1),
            "back_at_s": round(back_at - start, 1),
            "start_node_s": round(restart_s, 1),
            "calls_started_after_recovery": len(report.started_after(recovered_from)),
            "unacked_one_way_handled_anyway": len(report.ids("one-way", "unacked") & counts.keys()),
            "handled_twice": twice(counts, report.ids("two-way") | report.ids("one-way")),
            "test_s": round(time.monotonic() - began, 1),
        },
    )

    check_outcomes(report, CALLS)
    missing = acked - counts.keys()
    assert not missing, f"{len(missing)} acknowledged one-way messages never handled"
    check_recovered(report, recovered_from)


@pytest.mark.cluster
def test_one_of_three_brokers_killed_under_load(
    private_cluster: PrivateBroker, make_env: MakeEnv, tmp_path: Path
) -> None:
    """Kill the broker that coordinates the service's group (with 4 partitions on 3
    brokers it usually leads some of them too) in a 3-node cluster, replication 3 and
    min ISR 2: traffic goes on through the other two, and no acknowledged one-way message
    is lost."""
    env = make_env(private_cluster.bootstrap, KOURIER_REPLICATION_FACTOR="3")
    began = time.monotonic()
    with services(env):
        # (It exits 1 as long as no caller has created the reply topic.)
        described = kourier_cli(env, "topics", "describe", "e2e", check=False)
        requests = env["KOURIER_TOPIC_PREFIX"] + "e2e.requests"
        assert f"{requests}: 4 partitions, replication factor 3" in described, described
        group = env["KOURIER_TOPIC_PREFIX"] + "e2e"
        victim = asyncio.run(coordinator(private_cluster.bootstrap, group))
        caller = CallerProcess(
            env, name="c", count=CALLS, seconds=CLUSTER_SECONDS, retry=FAULT_RETRY, timeout=30.0
        )
        try:
            assert caller.ready.wait(60), "".join(caller.lines[-20:])
            time.sleep(FAULT_AT)
            assert caller.running, "the load ended before the fault"
            private_cluster.kill_node(victim)
            killed_at = time.time()
            report = caller.report(timeout=150)
        finally:
            caller.kill()
        acked = report.ids("one-way", "acked")
        wait_handled(tmp_path, acked, timeout=60)
    counts = handled(tmp_path)
    start = report.raw["started_at"]
    # Leaders move after the broker session timeout (4 s); the group's coordinator too.
    recovered_from = killed_at - start + 10.0
    figures(
        "cluster-node-killed",
        {
            **report.summary(),
            "killed_node": victim,
            "killed_at_s": round(killed_at - start, 1),
            "calls_started_10s_after_the_kill": len(report.started_after(recovered_from)),
            "unacked_one_way_handled_anyway": len(report.ids("one-way", "unacked") & counts.keys()),
            "handled_twice": twice(counts, report.ids("two-way") | report.ids("one-way")),
            "test_s": round(time.monotonic() - began, 1),
        },
    )

    check_outcomes(report, CALLS)
    missing = acked - counts.keys()
    assert not missing, f"{len(missing)} acknowledged one-way messages never handled"
    check_recovered(report, recovered_from)


async def coordinator(bootstrap: str, group: str) -> int:
    """The node id of the broker that coordinates ``group`` (it is also node N of the
    script: scripts/kafka gives node N the id N)."""
    from aiokafka.client import AIOKafkaClient, CoordinationType  # type: ignore[import-untyped]

    client = AIOKafkaClient(bootstrap_servers=bootstrap.split(","))
    try:
        await client.bootstrap()
        return int(await client.coordinator_lookup(CoordinationType.GROUP, group))
    finally:
        await client.close()


def test_outage_while_dead_lettering_and_retrying(
    private_broker: PrivateBroker, make_env: MakeEnv, tmp_path: Path
) -> None:
    """The broker dies while a poison message is between its attempts and a slow two-way
    call is between its caller's attempts. The poison still ends in the dead-letter
    topic (its offset is not committed before the dead letter is acknowledged); the
    call's retry, which the broker cannot acknowledge, does not end the call with a
    PublishError: its first attempt was acknowledged, so it ends answered or timed out."""
    env = make_env(
        private_broker.bootstrap,
        KOURIER_PARTITIONS="1",
        KOURIER_RETRY_ATTEMPTS="2",
        KOURIER_RETRY_BACKOFF="4.0",
    )
    began = time.monotonic()
    with services(env, count=1) as [service]:
        caller = CallerProcess(
            env,
            name="slow",
            count=1,
            seconds=0.0,
            work_ms=8000,
            timeout=40.0,
            retry={"attempts": 6, "attempt_timeout": 1.0, "backoff": 0.5},
        )
        try:
            # The call's first attempt is acknowledged and being handled (for 8 s)...
            assert "slow-0" in wait_handled(tmp_path, ["slow-0"], timeout=60)
            # ... and the poison has failed once; its second attempt comes 4 s later.
            poison = asyncio.run(send_one(env, "/fail", {"id": "poison"}))
            assert "fail:poison" in wait_handled(tmp_path, ["fail:poison"], timeout=30)
            private_broker.kill_node(1)
            killed = time.monotonic()
            # Down for longer than the producer waits for an acknowledgement (10 s), and
            # until the service has failed to dead-letter the poison; then back on its data.
            while time.monotonic() - killed < 30 and (
                time.monotonic() - killed < 12
                or not any("could not dead-letter" in line for line in service.lines)
            ):
                time.sleep(0.2)
            private_broker.start_node(1)
            outage_s = time.monotonic() - killed
            report = caller.report(timeout=90)
        finally:
            caller.kill()
        letters: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while not letters and time.monotonic() < deadline:
            letters = [letter for letter in dead_letters(env) if letter["request_id"] == poison]
            time.sleep(0.5)

    [(_, _, outcome, start, end, detail)] = report.calls
    unacked_retries = sum("was not acknowledged" in line for line in caller.lines)
    figures(
        "outage-mid-retries",
        {
            "broker_down_until_back_s": round(outage_s, 1),
            "poison_dead_letters": len(letters),
            "slow_call": {"outcome": outcome, "seconds": round(end - start, 1), "detail": detail},
            # 1 when its reply, unsent in the outage, was recorded and replayed to the retry.
            "slow_call_handled": handled(tmp_path)["slow-0"],
            "caller_retries": report.raw["retries"],
            "caller_retries_not_acknowledged": unacked_retries,
            "caller_stop_error": report.raw["stop_error"],
            "test_s": round(time.monotonic() - began, 1),
        },
    )
    assert letters, "the poison message was neither dead-lettered nor kept for redelivery"
    assert outcome in ("ok", "timeout"), f"{outcome}: {detail}"
    # One service instance, so its idempotency store sees every repeat: the reply that
    # could not be sent is replayed, never earned by running the handler again.
    assert handled(tmp_path)["slow-0"] == 1, "the slow call's handler ran more than once"
    assert unacked_retries >= 1, "no retry fell into the outage"
    assert report.raw["stop_error"] == ""


async def send_one(env: dict[str, str], path: str, body: object) -> str:
    async with Client(Settings.from_env(env)) as client:
        return await client.send("e2e", "POST", path, json=body)
