"""The consume loop's rules: bounded work, per-key order, commit only what is done."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from kourier.server.consumer import RequestConsumer, _Progress
from kourier.transports.base import Record, TopicSpec
from kourier.transports.memory import MemoryBroker, MemoryTransport

TOPIC = "work"
GROUP = "workers"


async def _setup(partitions: int = 2) -> tuple[MemoryBroker, MemoryTransport]:
    broker = MemoryBroker()
    transport = MemoryTransport(broker)
    await transport.ensure_topics([TopicSpec(TOPIC, partitions)])
    return broker, transport


def _consumer(transport: MemoryTransport, handler: object, concurrency: int = 8) -> RequestConsumer:
    return RequestConsumer(
        transport,
        [TOPIC],
        GROUP,
        handler,  # type: ignore[arg-type]
        concurrency=concurrency,
        commit_interval=0.01,
        drain_timeout=2.0,
    )


async def _eventually(check: object, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def test_progress_commits_only_the_done_prefix() -> None:
    """A finished offset after an unfinished one is not committable yet."""
    progress = _Progress()
    for offset in (5, 6, 7, 9):  # offsets may have gaps
        progress.add(offset)
    progress.finish(6)
    assert progress.to_commit() is None
    progress.finish(5)
    assert progress.to_commit() == 7
    progress.finish(9)
    progress.finish(7)
    assert progress.to_commit() == 10


async def test_records_with_one_key_run_in_order_while_other_keys_overlap() -> None:
    """Same-key records never overlap and keep offset order; other keys run alongside."""
    _, transport = await _setup(partitions=1)
    active: dict[bytes, int] = defaultdict(int)
    overlap_same_key = 0
    max_parallel = 0
    running = 0
    seen: dict[bytes, list[int]] = defaultdict(list)

    async def handler(record: Record) -> None:
        nonlocal overlap_same_key, max_parallel, running
        assert record.key is not None
        active[record.key] += 1
        running += 1
        max_parallel = max(max_parallel, running)
        if active[record.key] > 1:
            overlap_same_key += 1
        await asyncio.sleep(0.005)
        seen[record.key].append(int(record.value or b"0"))
        active[record.key] -= 1
        running -= 1

    for i in range(60):
        key = f"k{i % 4}".encode()
        await transport.publish(TOPIC, str(i).encode(), key=key)
    consumer = _consumer(transport, handler, concurrency=16)
    await consumer.start()
    await _eventually(lambda: consumer.completed == 60)
    await consumer.stop()
    assert overlap_same_key == 0
    assert max_parallel > 1
    for key, values in seen.items():
        assert values == sorted(values), key


async def test_no_more_than_the_bound_is_held_at_once() -> None:
    """With concurrency 5 and a backlog of 50, at most 5 handlers ever run together."""
    _, transport = await _setup()
    running = 0
    peak = 0
    release = asyncio.Event()

    async def handler(record: Record) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    for i in range(50):
        await transport.publish(TOPIC, str(i).encode())
    consumer = _consumer(transport, handler, concurrency=5)
    await consumer.start()
    await _eventually(lambda: running == 5)
    await asyncio.sleep(0.1)
    assert consumer.in_flight == 5
    release.set()
    await _eventually(lambda: consumer.completed == 50)
    await consumer.stop()
    assert peak == 5


async def test_a_stuck_record_holds_back_the_commit_and_is_redelivered() -> None:
    """If one handler never finishes, later done records are not committed past it."""
    broker, transport = await _setup(partitions=1)
    for i in range(5):
        await transport.publish(TOPIC, str(i).encode())

    async def handler(record: Record) -> None:
        if record.value == b"2":
            await asyncio.sleep(60)

    consumer = RequestConsumer(
        transport,
        [TOPIC],
        GROUP,
        handler,
        concurrency=8,
        commit_interval=0.01,
        drain_timeout=0.2,
    )
    await consumer.start()
    await _eventually(lambda: consumer.completed == 4)
    await asyncio.sleep(0.05)
    assert broker.committed(GROUP) == {(TOPIC, 0): 2}
    await consumer.stop()  # the stuck handler is cancelled after the drain timeout
    assert broker.committed(GROUP) == {(TOPIC, 0): 2}

    again: list[bytes] = []

    async def record_all(record: Record) -> None:
        again.append(record.value or b"")

    second = _consumer(transport, record_all)
    await second.start()
    await _eventually(lambda: len(again) == 3)
    await second.stop()
    assert again == [b"2", b"3", b"4"]


async def test_a_handler_exception_does_not_stop_the_loop() -> None:
    """An exception escaping the handler is logged; the record counts as done."""
    broker, transport = await _setup(partitions=1)

    async def handler(record: Record) -> None:
        if record.value == b"0":
            raise RuntimeError("boom")

    for i in range(3):
        await transport.publish(TOPIC, str(i).encode())
    consumer = _consumer(transport, handler)
    await consumer.start()
    await _eventually(lambda: consumer.completed == 3)
    await consumer.stop()
    assert broker.committed(GROUP) == {(TOPIC, 0): 3}


async def test_partitions_move_to_a_new_member_after_their_work_is_committed() -> None:
    """When a second instance joins, the first finishes and commits before handing over."""
    broker, transport = await _setup(partitions=4)
    handled: list[tuple[str, bytes]] = []

    def handler_for(name: str) -> object:
        async def handler(record: Record) -> None:
            await asyncio.sleep(0.001)
            handled.append((name, record.value or b""))

        return handler

    first = _consumer(transport, handler_for("a"))
    await first.start()
    for i in range(40):
        await transport.publish(TOPIC, str(i).encode())
    await _eventually(lambda: len(handled) >= 10)
    second = _consumer(transport, handler_for("b"))
    await second.start()
    for i in range(40, 80):
        await transport.publish(TOPIC, str(i).encode())
    await _eventually(lambda: len({v for _, v in handled}) == 80)
    await asyncio.sleep(0.1)
    await first.stop()
    await second.stop()
    assert len(handled) == 80, "nothing handled twice without a crash"
    assert {n for n, _ in handled} == {"a", "b"}
    assert sum(broker.committed(GROUP).values()) == 80


async def test_a_full_member_keeps_polling_so_rebalances_complete() -> None:
    """With every slot busy, the member still answers a rebalance (it pauses, not stops)."""
    _, transport = await _setup(partitions=2)
    release = asyncio.Event()

    async def blocked(record: Record) -> None:
        await release.wait()

    for i in range(10):
        await transport.publish(TOPIC, str(i).encode())
    first = _consumer(transport, blocked, concurrency=2)
    await first.start()
    await _eventually(lambda: first.in_flight == 2 and first.full)
    second = _consumer(transport, blocked, concurrency=2)
    await second.start()
    # The first member must run its revocation (draining for up to 2 s) from its loop.
    await _eventually(lambda: second.joined and first.joined, timeout=5.0)
    assert first.assigned and second.assigned
    release.set()
    await first.stop()
    await second.stop()


async def test_a_member_full_only_for_moments_never_pauses() -> None:
    """Slots that free within PAUSE_AFTER do not pause the partitions: a pause can cost
    a client what it prefetched (aiokafka drops it and fetches it all again)."""
    _, transport = await _setup(partitions=1)
    handled: list[bytes | None] = []

    async def brief(record: Record) -> None:
        await asyncio.sleep(0.005)
        handled.append(record.value)

    for i in range(40):
        await transport.publish(TOPIC, str(i).encode())
    consumer = _consumer(transport, brief, concurrency=2)
    pauses: list[object] = []
    group_consumer = consumer._consumer
    original = group_consumer.pause

    def counting_pause(partitions: object) -> None:
        pauses.append(partitions)
        original(partitions)  # type: ignore[arg-type]

    group_consumer.pause = counting_pause  # type: ignore[method-assign]
    await consumer.start()
    await _eventually(lambda: len(handled) == 40)
    await consumer.stop()
    assert pauses == []
    assert sorted(int(value or b"") for value in handled) == list(range(40))


async def test_a_backlog_starts_in_batches_with_the_loop_run_between() -> None:
    """Work a handler leaves for the event loop (the producer sending its reply) runs
    before the next batch of a backlog starts, not after the whole backlog."""
    from kourier.server.consumer import FETCH_BATCH

    _, transport = await _setup(partitions=1)
    events: list[str] = []

    async def handler(record: Record) -> None:
        number = int(record.value or b"")
        events.append(f"start {number}")
        # As a producer does for a reply: wake a task that runs on a later loop step.
        asyncio.get_running_loop().call_soon(events.append, f"sent {number}")

    total = FETCH_BATCH * 3
    for i in range(total):
        await transport.publish(TOPIC, str(i).encode())
    consumer = _consumer(transport, handler, concurrency=total)
    await consumer.start()
    await _eventually(lambda: consumer.completed == total)
    await consumer.stop()
    assert sorted(e for e in events if e.startswith("start")) == sorted(
        f"start {i}" for i in range(total)
    )
    # The first record's reply left before the second batch began.
    assert events.index("sent 0") < events.index(f"start {FETCH_BATCH}")
    # And no batch was larger than FETCH_BATCH: between two sends, at most that many starts.
    starts_in_a_row = 0
    for event in events:
        starts_in_a_row = starts_in_a_row + 1 if event.startswith("start") else 0
        assert starts_in_a_row <= FETCH_BATCH


async def test_records_that_do_not_wait_share_a_task_and_the_others_get_their_own() -> None:
    """Records the inline rule accepts run in one task while none waits; a record it
    refuses gets a task of its own; all are committed."""
    broker, transport = await _setup(partitions=1)
    tasks: dict[bytes, asyncio.Task[object] | None] = {}

    async def handler(record: Record) -> None:
        assert record.value is not None
        tasks[record.value] = asyncio.current_task()

    consumer = RequestConsumer(
        transport,
        [TOPIC],
        GROUP,
        handler,
        concurrency=8,
        commit_interval=0.01,
        drain_timeout=2.0,
        inline=lambda record: record.value != b"alone",
    )
    for value in (b"a", b"b", b"alone", b"c"):
        await transport.publish(TOPIC, value)
    await consumer.start()
    try:
        await _eventually(lambda: len(tasks) == 4)
        assert tasks[b"a"] is tasks[b"b"] is tasks[b"c"]
        assert tasks[b"alone"] is not tasks[b"a"]
        await _eventually(lambda: broker.committed(GROUP).get((TOPIC, 0)) == 4)
        assert consumer.in_flight == 0
    finally:
        await consumer.stop()
