"""The demo: start the orders service with `kourier run`, then call it over Kafka.

Run it with ``scripts/demo`` (which starts a local Kafka broker first), or with
``python -m examples.demo`` when KOURIER_BOOTSTRAP_SERVERS names a running broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable

import httpx

from kourier import Client, KourierTransport, Settings


def start_service(settings_env: dict[str, str]) -> subprocess.Popen[str]:
    """Start `kourier run examples.orders:app` and wait until it says it is ready."""
    process = subprocess.Popen(
        [sys.executable, "-m", "kourier", "run", "examples.orders:app", "--service", "orders"],
        env={**os.environ, **settings_env},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    for line in process.stderr:
        print(f"  [service] {line.rstrip()}")
        if "ready: service" in line:
            # Keep draining the service's log so a full pipe never blocks it.
            threading.Thread(target=_echo, args=(process.stderr,), daemon=True).start()
            return process
        if time.monotonic() > deadline:
            break
    process.kill()
    raise SystemExit("the orders service did not become ready")


def _echo(stream: Iterable[str]) -> None:
    for line in stream:
        print(f"  [service] {line.rstrip()}")


async def call(settings: Settings) -> None:
    async with Client(settings) as client:
        transport = KourierTransport(client)
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as http:
            print("\n== two-way, with plain httpx code ==")
            created = await http.post("/orders", json={"item": "book", "quantity": 2})
            print(f"POST /orders -> {created.status_code} {created.json()}")
            order_id = created.json()["id"]
            fetched = await http.get(f"/orders/{order_id}")
            print(f"GET /orders/{order_id} -> {fetched.status_code} {fetched.json()}")
            missing = await http.get("/orders/999")
            print(f"GET /orders/999 -> {missing.status_code} {missing.json()}")
            invalid = await http.post("/orders", json={"quantity": "many"})
            print(f"POST /orders (invalid) -> {invalid.status_code}")

            print("\n== streamed reply: items as they arrive ==")
            async with http.stream("GET", f"/orders/{order_id}/tracking") as response:
                async for line in response.aiter_lines():
                    print(f"  {time.strftime('%H:%M:%S')} {line}")

        print("\n== one-way: returns once the broker has the message ==")
        for kind in ("created", "paid", "shipped"):
            request_id = await client.send(
                "orders", "POST", "/events", json={"kind": kind, "order_id": order_id}
            )
            print(f"sent {kind!r} as {request_id}")

        print("\n== native client: per-call timeout ==")
        for _ in range(50):
            reply = await client.request("orders", "GET", "/events/count", timeout=2.0)
            count = reply.json()["count"]
            if count >= 3:
                break
            await asyncio.sleep(0.1)
        print(f"GET /events/count -> {count} events handled")


def main() -> None:
    # aiokafka logs transient broker states (a new topic's leader not known yet) as
    # errors and retries them itself; the demo shows what kourier reports.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    servers = os.environ.get("KOURIER_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    prefix = f"demo{uuid.uuid4().hex[:6]}."
    env = {"KOURIER_BOOTSTRAP_SERVERS": servers, "KOURIER_TOPIC_PREFIX": prefix}
    print(f"kafka at {servers}; topics start with {prefix!r}")
    service = start_service(env)
    try:
        asyncio.run(call(Settings(bootstrap_servers=servers, topic_prefix=prefix)))
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
        print(f"\nservice stopped (exit code {service.returncode})")


if __name__ == "__main__":
    main()
