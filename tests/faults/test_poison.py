"""A poison message: its handler always fails. It must not hold up other keys, and it
must end in the dead-letter topic after its retries, where `kourier dead-letters list`
shows it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from kourier import Client, Settings
from tests.conftest import kafka_bootstrap
from tests.faults.conftest import MakeEnv
from tests.faults.harness import dead_letters, figures, services

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(120)]

OTHERS = 200


def handling_order(folder: Path) -> list[str]:
    """The lines of the one service process's handled log, in the order it wrote them."""
    [log] = folder.glob("handled-*.log")
    return log.read_text().split()


async def send_poison_then_others(env: dict[str, str]) -> str:
    """The poison (key "p"), 200 messages of other keys, one more with key "p"."""
    async with Client(Settings.from_env(env)) as client:
        poison = await client.send("e2e", "POST", "/fail", json={"id": "poison"}, key="p")
        for i in range(OTHERS):
            await client.send("e2e", "POST", f"/work/other-{i}", key=f"k{i}")
        await client.send("e2e", "POST", "/work/after-poison", key="p")
    return poison


def test_a_poison_message_is_dead_lettered_without_blocking_other_keys(
    make_env: MakeEnv, tmp_path: Path
) -> None:
    """One partition, one service. The poison (key "p") fails 3 times, 1 s then 2 s
    apart; the 200 messages of other keys sent after it are all handled between its
    first and last attempt; the message sent after it with its own key waits for it (per-
    key order); and the poison is listed in the dead-letter topic with 3 attempts."""
    env = make_env(
        kafka_bootstrap(),
        KOURIER_PARTITIONS="1",
        KOURIER_RETRY_ATTEMPTS="3",
        KOURIER_RETRY_BACKOFF="1.0",
    )
    began = time.monotonic()
    with services(env, count=1):
        poison = asyncio.run(send_poison_then_others(env))
        letters: list[dict[str, object]] = []
        deadline = time.monotonic() + 60
        while not letters and time.monotonic() < deadline:
            letters = dead_letters(env)
            order = handling_order(tmp_path)
            if "after-poison" not in order:
                letters = []
            time.sleep(0.2)
    order = handling_order(tmp_path)

    attempts = [n for n, line in enumerate(order) if line == "fail:poison"]
    assert len(attempts) == 3, order[:10]
    others = [n for n, line in enumerate(order) if line.startswith("other-")]
    assert len(others) == OTHERS, "a message of another key was not handled"
    assert attempts[0] < min(others) and max(others) < attempts[-1], (
        "messages of other keys waited for the poison"
    )
    assert order.index("after-poison") > attempts[-1], "the poison's own key was overtaken"
    [letter] = letters
    assert letter["request_id"] == poison
    assert letter["attempts"] == 3
    assert "status 500 after 3 attempts" in str(letter["reason"])
    figures(
        "poison",
        {
            "other_keys_handled_before_last_attempt": sum(1 for n in others if n < attempts[-1]),
            "dead_letter": {k: letter[k] for k in ("position", "attempts", "reason")},
            "test_s": round(time.monotonic() - began, 1),
        },
    )
