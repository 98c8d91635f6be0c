"""A log handler that writes lines below WARNING in batches, at most 50 ms late.

``kourier run`` logs a line per request (the access log, on by default as uvicorn's).
At thousands of requests a second a write system call per line, each waking whatever
reads the service's stderr, cost more than the line itself: on Kafka, one-way messages
cost the service about 60-90 µs of CPU more with the access log than without, against
12-14 µs to format and write a line in process. This handler keeps such lines and
writes them together once per ``FLUSH_AFTER`` seconds (or every ``MAX_LINES``).

It must never hold back a warning or an error: a line at WARNING or above is written
at once, after the lines kept before it, so the order stays. Lines logged outside a
running event loop, or from another thread than the loop's, are written at once too.
At exit ``logging.shutdown`` flushes what is kept; only a process killed outright (or
``os._exit``, a second stop signal) loses the last ``FLUSH_AFTER`` seconds of them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import IO

#: Seconds a line below WARNING may wait before it is written.
FLUSH_AFTER = 0.05
#: Lines kept at most; one more writes them all.
MAX_LINES = 512


class BatchedStreamHandler(logging.StreamHandler[IO[str]]):
    """``logging.StreamHandler`` that writes lines below WARNING in batches."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._flush_due = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
            if record.levelno >= logging.WARNING or len(self._lines) >= MAX_LINES:
                self._write()
                return
            if self._flush_due:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop in this thread: nothing would flush later
                self._write()
                return
            self._flush_due = True
            loop.call_later(FLUSH_AFTER, self._flush_later)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def _flush_later(self) -> None:
        self._flush_due = False
        try:
            self.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "a batch of log lines"}))

    def _write(self) -> None:
        """Write the kept lines and flush the stream (the handler's lock is held)."""
        lines, self._lines = self._lines, []
        if lines:
            self.stream.write(self.terminator.join(lines) + self.terminator)
        if hasattr(self.stream, "flush"):
            self.stream.flush()
