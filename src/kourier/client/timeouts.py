"""What a caller's timeout says: which call, after how long, and what changes it.

A bare "no reply in time" leaves the user to guess which of many calls gave up and
which of three knobs would have let it wait longer. This module only words the error;
it never decides when a call times out.
"""

from __future__ import annotations

from kourier.errors import ReplyTimeout

#: Every way to give a call more time, in the user's words.
HOW_TO_WAIT_LONGER = (
    "to wait longer, pass timeout= to the call (or to the httpx client), set "
    "KOURIER_DEFAULT_TIMEOUT for calls that give none, or use --timeout with "
    "kourier request"
)


def timed_out(
    cause: ReplyTimeout, service: str, method: str, path: str, seconds: float, *, what: str = ""
) -> ReplyTimeout:
    """``cause`` again, naming the call, the timeout used and how to change it.

    ``what`` says which wait it was when it was not the first (``a streamed item``).
    """
    if getattr(cause, "service", None) is not None:
        return cause  # already worded, by an inner call
    wait = f"{what}: " if what else ""
    error = ReplyTimeout(
        f"{service} {method.upper()} {path}: {wait}{cause} (timeout {seconds:g} s); "
        + HOW_TO_WAIT_LONGER
    )
    error.service, error.method, error.path, error.timeout = service, method, path, seconds
    return error
