"""BatchedStreamHandler: lines below WARNING in batches, warnings at once, in order."""

from __future__ import annotations

import asyncio
import io
import logging
import threading

from kourier.ops import batched_log
from kourier.ops.batched_log import BatchedStreamHandler


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"tests.batched.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


async def test_info_lines_in_the_loop_are_written_together_soon_after() -> None:
    """Info lines logged in a running loop are kept, then written in one batch within
    FLUSH_AFTER seconds."""
    stream = io.StringIO()
    logger = _logger(BatchedStreamHandler(stream))
    logger.info("one")
    logger.info("two")
    assert stream.getvalue() == ""
    await asyncio.sleep(batched_log.FLUSH_AFTER * 3)
    assert stream.getvalue() == "one\ntwo\n"


async def test_a_warning_is_written_at_once_after_the_lines_before_it() -> None:
    """A warning is never held back: it goes out at once, after the kept lines."""
    stream = io.StringIO()
    logger = _logger(BatchedStreamHandler(stream))
    logger.info("before")
    logger.warning("trouble")
    assert stream.getvalue() == "before\ntrouble\n"


def test_lines_outside_a_loop_and_from_other_threads_are_written_at_once() -> None:
    """With no running loop in the logging thread nothing would flush later, so the
    line is written at once."""
    stream = io.StringIO()
    logger = _logger(BatchedStreamHandler(stream))
    logger.info("outside")
    assert stream.getvalue() == "outside\n"
    thread = threading.Thread(target=logger.info, args=("from a thread",))
    thread.start()
    thread.join()
    assert stream.getvalue() == "outside\nfrom a thread\n"


async def test_flushing_writes_what_is_kept() -> None:
    """flush() (logging.shutdown calls it at exit) writes the kept lines."""
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream)
    _logger(handler).info("kept")
    handler.flush()
    assert stream.getvalue() == "kept\n"
