"""What the user of the local broker sees: messages on stderr, ``KEY=VALUE`` on stdout.

The output contract other programs rely on (the test scripts, the pytest plugin, a
shell's ``eval "$(kourier kafka start)"``): stdout carries only ``KEY=VALUE`` lines,
shell-quoted, and the last one is always ``KOURIER_BOOTSTRAP_SERVERS=...``. Everything
meant for a person goes to stderr. This module must never print anything else on stdout.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence


class LocalKafkaError(Exception):
    """A clear failure: its message says what is wrong and what to do. The command
    prints it without a traceback and exits 1."""


def say(message: str) -> None:
    """A message for the person at the terminal (stderr)."""
    print(f"kafka: {message}", file=sys.stderr, flush=True)


def env_lines(bootstrap: str, extra: Sequence[tuple[str, str]] = ()) -> list[str]:
    """The stdout lines for a broker: ``extra`` first, the bootstrap servers last."""
    lines = [f"{key}={shlex.quote(value)}" for key, value in extra]
    lines.append(f"KOURIER_BOOTSTRAP_SERVERS={shlex.quote(bootstrap)}")
    return lines


def print_env(bootstrap: str, extra: Sequence[tuple[str, str]] = ()) -> None:
    """Print :func:`env_lines` on stdout."""
    for line in env_lines(bootstrap, extra):
        print(line)
    sys.stdout.flush()
