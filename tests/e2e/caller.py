"""One caller instance of the end-to-end test: sends a mix of calls, prints a JSON report.

python -m tests.e2e.caller NAME COUNT [SECONDS]  (settings from KOURIER_* variables)

With SECONDS the calls are spread evenly over that time instead of sent at once.
"""

from __future__ import annotations

import asyncio
import json
import sys

from kourier import Client, KourierError


async def main(name: str, count: int, spread: float = 0.0) -> dict[str, object]:
    report: dict[str, object] = {}
    wrong: list[str] = []
    failed: list[str] = []
    sent_one_way: list[str] = []
    two_way = streamed = 0
    semaphore = asyncio.Semaphore(32)

    async with Client() as client:

        async def one(i: int) -> None:
            nonlocal two_way, streamed
            tag = f"{name}-{i}"
            if spread:
                await asyncio.sleep(spread * i / count)
            async with semaphore:
                try:
                    if i % 5 in (0, 1):
                        response = await client.request(
                            "e2e", "POST", "/echo", json={"tag": tag}, timeout=30
                        )
                        if response.status_code != 200 or response.json()["echo"] != {"tag": tag}:
                            wrong.append(tag)
                        two_way += 1
                    elif i % 5 in (2, 3):
                        await client.send("e2e", "POST", "/record", json={"id": tag})
                        sent_one_way.append(tag)
                    else:
                        async with client.stream(
                            "e2e", "GET", "/items", params={"n": 3, "tag": tag}, timeout=30
                        ) as reply:
                            got = [item async for item in reply.aiter_json()]
                        if got != [{"tag": tag, "i": k} for k in range(3)]:
                            wrong.append(tag)
                        streamed += 1
                except KourierError as exc:
                    failed.append(f"{tag}: {exc!r}")

        await asyncio.gather(*(one(i) for i in range(count)))
        report["waiting_after"] = client.inbox.waiting
    report.update(
        name=name,
        two_way=two_way,
        streamed=streamed,
        one_way=sent_one_way,
        wrong=wrong,
        failed=failed,
    )
    return report


if __name__ == "__main__":
    spread = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    result = asyncio.run(main(sys.argv[1], int(sys.argv[2]), spread))
    print(json.dumps(result))
