"""Fault injection on the service side: a service killed or stopped under a steady load.

Two `kourier run` processes share a service's four partitions on the shared broker; a
caller process sends 6,000 calls (3,000 two-way, 3,000 one-way) evenly over 20 s, and a
service is killed (SIGKILL) or stopped (SIGTERM) about 7 s in. The caller's report says
what became of every call; the services' handled logs say what ran, and how often.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import kafka_bootstrap
from tests.e2e.test_processes import ServiceProcess
from tests.faults.conftest import MakeEnv
from tests.faults.harness import (
    FAULT_RETRY,
    CallerProcess,
    check_outcomes,
    figures,
    handled,
    service_stats,
    services,
    twice,
    wait_handled,
)

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(240)]

CALLS = 6000
SECONDS = 20.0
FAULT_AT = 7.0


@pytest.mark.parametrize("store", ["memory-store", "no-store"])
def test_sigkill_of_one_service_loses_nothing(
    store: str, make_env: MakeEnv, tmp_path: Path
) -> None:
    """SIGKILL one of two services mid-load: every acknowledged one-way message is
    handled, every two-way call (retried with its request id) is answered or ends in
    ReplyTimeout; and what was handled twice is counted, with the in-process
    idempotency store and without it (KOURIER_IDEMPOTENCY_WINDOW=0)."""
    overrides = {} if store == "memory-store" else {"KOURIER_IDEMPOTENCY_WINDOW": "0"}
    env = make_env(kafka_bootstrap(), **overrides)
    began = time.monotonic()
    with services(env) as (survivor, victim):
        caller = CallerProcess(
            env, name="k", count=CALLS, seconds=SECONDS, retry=FAULT_RETRY, timeout=30.0
        )
        try:
            assert caller.ready.wait(60), "".join(caller.lines[-20:])
            time.sleep(FAULT_AT)
            assert caller.running, "the load ended before the fault"
            victim.process.kill()
            killed_at = time.time()
            report = caller.report(timeout=150)
        finally:
            caller.kill()
        wait_handled(tmp_path, report.ids("one-way", "acked"), timeout=60)
    counts = handled(tmp_path)  # after the survivor drained and stopped
    stats = service_stats(survivor)
    figures(
        f"sigkill[{store}]",
        {
            "fault_at_s": round(killed_at - report.raw["started_at"], 1),
            **report.summary(),
            "handled_twice_two_way": twice(counts, report.ids("two-way")),
            "handled_twice_one_way": twice(counts, report.ids("one-way")),
            "handled_three_times_or_more": sum(1 for n in counts.values() if n > 2),
            "survivor_replays_from_store": stats.get("duplicates", 0),
            "survivor_expired_skipped": stats.get("expired", 0),
            "test_s": round(time.monotonic() - began, 1),
        },
    )

    check_outcomes(report, CALLS)
    assert report.by_outcome.keys() <= {
        ("two-way", "ok"),
        ("two-way", "timeout"),
        ("one-way", "acked"),
    }, report.summary()
    missing = report.ids("one-way", "acked") - counts.keys()
    assert not missing, f"{len(missing)} acknowledged one-way messages never handled"
    assert report.ids("two-way", "ok") <= counts.keys()


def test_sigterm_and_restart_lose_nothing_and_do_nothing_twice(
    make_env: MakeEnv, tmp_path: Path
) -> None:
    """SIGTERM one of two services mid-load and start it again: it drains and commits
    what it did, so nothing is lost and nothing is handled twice (no caller retries)."""
    env = make_env(kafka_bootstrap())
    began = time.monotonic()
    with services(env) as running:
        caller = CallerProcess(env, name="t", count=CALLS, seconds=SECONDS, timeout=30.0)
        try:
            assert caller.ready.wait(60), "".join(caller.lines[-20:])
            time.sleep(FAULT_AT)
            assert caller.running, "the load ended before the fault"
            stopping = running[0]
            signalled = time.monotonic()
            code = stopping.stop()
            if code != 0:  # the whole log, untruncated, for the post-mortem
                print(f"exit code {code}; the stopped service's log:\n" + "".join(stopping.lines))
            assert code == 0, f"the service stopped with exit code {code}"
            drained_s = time.monotonic() - signalled
            replacement = ServiceProcess(env)
            running.append(replacement)  # stopped by services() on the way out
            assert replacement.ready.wait(90), "".join(replacement.lines[-30:])
            restarted_s = time.monotonic() - signalled
            assert caller.running, "the load ended before the restart"
            report = caller.report(timeout=150)
        finally:
            caller.kill()
        wait_handled(tmp_path, report.ids("one-way", "acked"), timeout=60)
    counts = handled(tmp_path)
    every = report.ids("two-way") | report.ids("one-way")
    doubled = sorted(i for i in every if counts[i] > 1)
    figures(
        "sigterm",
        {
            **report.summary(),
            "drain_and_exit_s": round(drained_s, 2),
            "signal_to_replacement_ready_s": round(restarted_s, 1),
            "handled_twice": len(doubled),
            "test_s": round(time.monotonic() - began, 1),
        },
    )

    check_outcomes(report, CALLS)
    assert report.count("two-way", "ok") == CALLS // 2, report.summary()
    assert report.count("one-way", "acked") == CALLS // 2, report.summary()
    missing = every - counts.keys()
    assert not missing, f"{len(missing)} calls never handled"
    assert not doubled, f"{len(doubled)} calls handled twice, e.g. {doubled[:5]}"


def test_a_backlog_whose_callers_gave_up_is_skipped(make_env: MakeEnv, tmp_path: Path) -> None:
    """The only service instance is killed (SIGKILL), and 400 calls are made while the
    registry still counts it live (its last heartbeat is recent): the 200 two-way calls
    (2 s deadline) end in ReplyTimeout, the 200 one-way messages (no deadline) wait in
    Kafka. The service that starts afterwards skips the expired two-way requests without
    running them and handles every one-way message."""
    env = make_env(kafka_bootstrap(), KOURIER_HEARTBEAT_INTERVAL="30")
    began = time.monotonic()
    with services(env, count=1) as [crashed]:
        os.kill(crashed.process.pid, signal.SIGKILL)
    caller = CallerProcess(env, name="b", count=400, seconds=1.0, timeout=2.0)
    try:
        report = caller.report(timeout=60)
    finally:
        caller.kill()
    assert report.count("two-way", "timeout") == 200, report.summary()
    assert report.count("one-way", "acked") == 200, report.summary()
    with services(env, count=1) as [service]:
        started = time.monotonic()
        counts = wait_handled(tmp_path, report.ids("one-way"), timeout=60)
        drained_s = time.monotonic() - started
    stats = service_stats(service)
    figures(
        "backlog-after-outage",
        {
            **report.summary(),
            "service_expired_skipped": stats.get("expired"),
            "service_handled": stats.get("handled"),
            "backlog_done_s": round(drained_s, 2),
            "test_s": round(time.monotonic() - began, 1),
        },
    )
    assert report.ids("one-way") <= counts.keys()
    assert not report.ids("two-way") & counts.keys(), "an expired request was run"
    assert stats.get("expired") == 200, stats
