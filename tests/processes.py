"""A child process of a test whose stderr is kept and watched for a readiness line."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class LoggedProcess:
    """Runs ``argv`` from the project's root; a thread reads its stderr line by line into
    ``lines`` and sets ``ready`` at the first line ``is_ready`` accepts. With
    ``capture_stdout`` its stdout is a pipe, for ``communicate``."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        is_ready: Callable[[str], bool],
        *,
        capture_stdout: bool = False,
    ) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._is_ready = is_ready
        self.process = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE if capture_stdout else None,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if not self.ready.is_set() and self._is_ready(line):
                self.ready.set()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def join_reader(self) -> None:
        """Wait (briefly) until everything the process wrote to stderr is in ``lines``."""
        self._reader.join(timeout=5)
