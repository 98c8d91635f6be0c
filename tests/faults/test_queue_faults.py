"""Fault injection in queue mode: a service killed under a steady load on a share group.

The ordered mode's SIGKILL soak (tests/faults/test_service_faults.py), with two
`kourier run` processes in queue mode (KOURIER_CONSUMPTION=queue, confluent-kafka) on a
1-partition request topic: a caller sends 3,000 calls evenly over 15 s and one service is
killed about 5 s in. The share group's lock is Kafka's minimum (15 s), so what the dead
instance held comes back within 15 s; its delivery limit is the broker's largest (10).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import kafka_bootstrap
from tests.faults.conftest import MakeEnv
from tests.faults.harness import (
    FAULT_RETRY,
    CallerProcess,
    check_outcomes,
    figures,
    handled,
    services,
    twice,
    wait_handled,
)
from tests.share_groups import configure_share_group

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(240)]

CALLS = 3000
SECONDS = 15.0
FAULT_AT = 5.0


def test_sigkill_of_one_queue_instance_loses_nothing(make_env: MakeEnv, tmp_path: Path) -> None:
    """SIGKILL one of two queue-mode services mid-load: every acknowledged one-way message
    is handled, every two-way call is answered or ends in ReplyTimeout."""
    env = make_env(
        kafka_bootstrap(),
        KOURIER_CONSUMPTION="queue",
        KOURIER_KAFKA_CLIENT="confluent",
        KOURIER_PARTITIONS="1",
    )
    configure_share_group(
        kafka_bootstrap(),
        f"{env['KOURIER_TOPIC_PREFIX']}e2e",
        share_record_lock_duration_ms="15000",
        share_delivery_count_limit="10",
    )
    began = time.monotonic()
    with services(env) as (_survivor, victim):
        caller = CallerProcess(
            env, name="q", count=CALLS, seconds=SECONDS, retry=FAULT_RETRY, timeout=30.0
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
    counts = handled(tmp_path)
    figures(
        "queue-sigkill",
        {
            "fault_at_s": round(killed_at - report.raw["started_at"], 1),
            **report.summary(),
            "handled_twice_two_way": twice(counts, report.ids("two-way")),
            "handled_twice_one_way": twice(counts, report.ids("one-way")),
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
