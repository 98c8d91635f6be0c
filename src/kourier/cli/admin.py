"""``kourier topics`` and ``kourier dead-letters``: the operator's commands."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING

from kourier.cli.common import CLIError, connected

if TYPE_CHECKING:
    from kourier.admin import DeadLetter


async def _topics(args: argparse.Namespace) -> int:
    from kourier import admin

    async with connected(args) as (transport, settings):
        if args.action == "ensure":
            await admin.ensure_topics(transport, settings, args.service)
        missing = 0
        for name, info in await admin.describe_topics(transport, settings, args.service):
            if info is None:
                missing += 1
                print(f"{name}: missing")
            else:
                print(
                    f"{name}: {info.partitions} partitions, "
                    f"replication factor {info.replication_factor}"
                )
    return 1 if missing else 0


async def _dead_letters(args: argparse.Namespace) -> int:
    from kourier import admin

    async with connected(args) as (transport, settings):
        letters = await admin.read_dead_letters(transport, settings, args.service)
        if args.action == "list":
            for letter in letters:
                _print_letter(letter, as_json=args.json, full=args.full)
            if not args.json:
                replayed = sum(letter.replayed for letter in letters)
                print(
                    f"{len(letters)} dead letters ({replayed} replayed) "
                    f"in {settings.dead_letter_topic(args.service)}"
                )
            return 0
        if not args.all and not args.position:
            raise CLIError("replay: say which, with --position P:O (repeatable) or --all", 2)
        # --all replays what was not replayed yet; --position replays what it names.
        chosen = [letter for letter in letters if not letter.replayed]
        if len(chosen) < len(letters) and args.all:
            print(f"skipping {len(letters) - len(chosen)} dead letters replayed before")
        if not args.all:
            wanted = set(args.position)
            chosen = [letter for letter in letters if letter.position in wanted]
            unknown = wanted - {letter.position for letter in chosen}
            if unknown:
                raise CLIError(f"replay: no dead letter at {', '.join(sorted(unknown))}", 1)
        count = await admin.replay(transport, settings, args.service, chosen)
        print(f"replayed {count} dead letters to {settings.request_topic(args.service)}")
        return 0


#: Characters of a body ``dead-letters list`` shows without ``--full``.
BODY_PREVIEW = 200


def _print_letter(letter: DeadLetter, *, as_json: bool, full: bool = False) -> None:
    fields = {
        "position": letter.position,
        "request_id": letter.header("kourier-id"),
        "method": letter.header("kourier-method"),
        "target": letter.header("kourier-target"),
        "attempts": letter.attempts,
        "reason": letter.reason,
        "source": letter.source,
        "replayed": letter.replayed,
        "body": _body_text(letter.record.value or b"", full=full),
        "body_bytes": len(letter.record.value or b""),
    }
    if as_json:
        print(json.dumps(fields))
        return
    mark = "  [replayed]" if letter.replayed else ""
    print(
        f"{fields['position']}  {fields['method'] or '-'} {fields['target'] or '-'}  "
        f"id={fields['request_id'] or '-'}  attempts={fields['attempts']}  "
        f"reason: {fields['reason']}{mark}"
    )
    if fields["body_bytes"]:
        print(f"    body: {fields['body']}")


def _body_text(body: bytes, *, full: bool) -> str:
    """The body as one line of text; cut at BODY_PREVIEW characters unless ``full``."""
    text = body.decode("utf-8", "backslashreplace").replace("\n", "\\n").replace("\r", "\\r")
    if full or len(text) <= BODY_PREVIEW:
        return text
    return f"{text[:BODY_PREVIEW]}… ({len(body)} bytes; --full shows all)"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    topics = sub.add_parser(
        "topics",
        help="create or describe a service's topics",
        description="Create (ensure) or describe the topics a service needs: its request "
        "and dead-letter topics and the shared reply topic, with the configured partitions "
        "and replication (KOURIER_PARTITIONS, KOURIER_REPLICATION_FACTOR, ...).",
        epilog="examples:\n  kourier topics ensure orders\n  kourier topics describe orders",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    topics.add_argument("action", choices=["ensure", "describe"])
    topics.add_argument("service")
    topics.set_defaults(func=lambda a: asyncio.run(_topics(a)))

    dead = sub.add_parser(
        "dead-letters",
        help="list or replay a service's dead letters",
        description="List the records a service could not process, or publish copies of "
        "them to its request topic again. Replay does not delete them; it marks them "
        "replayed, and list shows the mark.",
        epilog="examples:\n  kourier dead-letters list orders\n"
        "  kourier dead-letters replay orders --position 0:17\n"
        "  kourier dead-letters replay orders --all",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dead.add_argument("action", choices=["list", "replay"])
    dead.add_argument("service")
    dead.add_argument("--json", action="store_true", help="list: one JSON object per line")
    dead.add_argument(
        "--full", action="store_true", help=f"list: whole bodies (default: {BODY_PREVIEW} chars)"
    )
    dead.add_argument(
        "--position", action="append", metavar="P:O", help="replay: partition:offset (repeat)"
    )
    dead.add_argument(
        "--all", action="store_true", help="replay: every dead letter not replayed before"
    )
    dead.set_defaults(func=lambda a: asyncio.run(_dead_letters(a)))
