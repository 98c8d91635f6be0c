"""``kourier kafka``: a local Apache Kafka broker for tests and development.

The commands are ``kourier.localkafka``'s (standard library only, so the same commands
also run as ``python -m kourier.localkafka`` before a virtualenv exists); this module
only hangs them under ``kourier`` and turns their errors into the CLI's one-line errors.
"""

from __future__ import annotations

import argparse

from kourier.cli.common import CLIError
from kourier.localkafka.commands import add_commands, run
from kourier.localkafka.console import LocalKafkaError

DESCRIPTION = """\
A real Apache Kafka 4.x broker on 127.0.0.1: one or three KRaft nodes, optional SASL
and TLS listeners. It needs Java 17+, and either Maven (once, to fetch the jars from
Maven Central into a cache) or KAFKA_HOME pointing at an unpacked Kafka distribution.
stdout carries only KEY=VALUE lines, the last one KOURIER_BOOTSTRAP_SERVERS=...;
messages go to stderr.

examples:
  set -a; eval "$(kourier kafka start)"; set +a
  kourier kafka start --nodes 3 --security
  kourier kafka status
  kourier kafka stop"""


def _run(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except LocalKafkaError as exc:
        raise CLIError(str(exc)) from exc


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kafka = sub.add_parser(
        "kafka",
        help="start, stop or inspect a local Kafka broker",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kafka.set_defaults(func=_run)
    add_commands(
        kafka.add_subparsers(dest="kafka_command", required=True, metavar="COMMAND"),
        "kourier kafka",
    )
