"""One caller process of a fault test: a paced load of two-way and one-way calls.

python -m tests.faults.load '{"name": "a", "count": 6000, "seconds": 20, ...}'
(settings from KOURIER_* variables)

Call i is started at ``seconds * i / count`` after the client is ready, whatever happened
to the calls before it, so a fault lands in the middle of a steady load. Even calls are
two-way (``PUT /work/<id>``), odd ones one-way (``POST /work/<id>``); the request id is
the work id, so the service's idempotency store, the caller's retries and the handled
logs all speak of the same id. The process writes ``ready`` to stderr once its client
has started, and prints one JSON report on stdout at the end: for every call its id,
kind, outcome and the seconds (since the client was ready) when it started and ended.

Outcomes: two-way ``ok``, ``wrong`` (an answer that is not the call's), ``timeout``
(ReplyTimeout), ``unacked`` (PublishError: the broker did not acknowledge the request),
``error`` (any other KourierError); one-way ``acked`` or ``unacked``/``error``.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import sys
import threading
import time
from typing import Any

from kourier import Client, KourierError, Retry
from kourier.errors import PublishError, ReplyTimeout

#: Seconds past the load's own bound (its pacing plus one call's timeout) after which the
#: process calls itself stuck: it writes what every thread and task is doing to stderr
#: and exits 3, so a hang shows in the test's failure instead of its timeout.
STUCK_AFTER = 45.0
#: Tasks whose stacks a stuck process writes (the rest are counted).
STUCK_TASKS_SHOWN = 20


def watchdog(loop: asyncio.AbstractEventLoop, seconds: float) -> threading.Timer:
    """A timer that reports the process stuck after ``seconds`` unless cancelled."""

    def stuck() -> None:
        print(f"stuck: not done {seconds:.0f} s after ready", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        shown = threading.Event()

        def tasks() -> None:  # on the loop: all_tasks is not thread-safe
            try:
                pending = list(asyncio.all_tasks(loop))
                print(f"{len(pending)} tasks pending", file=sys.stderr)
                for task in pending[:STUCK_TASKS_SHOWN]:
                    task.print_stack(limit=12, file=sys.stderr)
            finally:
                shown.set()

        loop.call_soon_threadsafe(tasks)
        shown.wait(5)  # a loop blocked in a call shows in the thread dump above
        sys.stderr.flush()
        os._exit(3)

    timer = threading.Timer(seconds, stuck)
    timer.daemon = True
    timer.start()
    return timer


async def main(options: dict[str, Any]) -> dict[str, Any]:
    name = str(options["name"])
    count = int(options["count"])
    seconds = float(options["seconds"])
    timeout = float(options.get("timeout", 30.0))
    work_ms = int(options.get("work_ms", 10))
    retry = None
    if options.get("retry"):
        retry = Retry(**options["retry"])
    calls: list[list[Any]] = []

    client = Client(retry=retry)
    await client.start()
    print("ready", file=sys.stderr, flush=True)
    stuck = watchdog(asyncio.get_running_loop(), seconds + timeout + STUCK_AFTER)
    started_at = time.time()
    t0 = time.monotonic()

    async def one(i: int) -> None:
        work_id = f"{name}-{i}"
        await asyncio.sleep(max(0.0, t0 + seconds * i / count - time.monotonic()))
        began = time.monotonic() - t0
        two_way = i % 2 == 0
        outcome = "ok" if two_way else "acked"
        detail = ""
        try:
            if two_way:
                response = await client.request(
                    "e2e",
                    "PUT",
                    f"/work/{work_id}",
                    params={"ms": work_ms},
                    request_id=work_id,
                    timeout=timeout,
                )
                if response.status_code != 200 or response.json()["id"] != work_id:
                    outcome = "wrong"
                    detail = f"{response.status_code} {response.text[:200]}"
            else:
                await client.send(
                    "e2e",
                    "POST",
                    f"/work/{work_id}",
                    params={"ms": work_ms},
                    request_id=work_id,
                )
        except ReplyTimeout as exc:
            outcome, detail = "timeout", str(exc)
        except PublishError as exc:
            outcome, detail = "unacked", str(exc)
        except KourierError as exc:
            outcome, detail = "error", repr(exc)
        calls.append(
            [
                work_id,
                "two-way" if two_way else "one-way",
                outcome,
                round(began, 3),
                round(time.monotonic() - t0, 3),
                detail[:300],
            ]
        )

    await asyncio.gather(*(one(i) for i in range(count)))
    waiting = client.inbox.waiting
    stop_error = ""
    try:
        await client.stop()
    except BaseException as exc:  # reported, not raised: the calls' outcomes come first
        stop_error = repr(exc)
    stuck.cancel()
    return {
        "name": name,
        "started_at": started_at,
        "calls": calls,
        "waiting_after": waiting,
        "retries": client.stats.retries,
        "timeouts": client.stats.timeouts,
        "stop_error": stop_error,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
