"""When and how a caller repeats a two-way call: the ``Retry`` policy.

``Client(settings, retry=Retry(attempts=3))`` makes it the default of every call;
``request(..., retry=Retry(...))`` or ``retry=False`` overrides it for one call; through
httpx, ``extensions={"kourier": {"retry": Retry(...)}}``. Retries are off unless asked
for.

Every attempt is the same request: same request id, same body, only ``attempt`` (the
``kourier-attempt`` header) goes up. A kourier service with its idempotency window
answers a repeat of an id it has handled with the recorded response, so a retry does
not run the handler twice; and the caller keeps listening for the earlier attempts'
replies while it tries again, so a late answer still completes the call.

It must never make a call repeat that is not safe to repeat: only idempotent methods,
calls with an ``Idempotency-Key`` header, or calls with an ordering key (all attempts
land on one partition, so on the instance that remembers the id) are retried, unless
the caller says ``unsafe=True``. And it must never stretch a call past its deadline:
the attempts share the call's one timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

from kourier.errors import SettingsError
from kourier.protocol import Request

#: Methods that RFC 9110 defines as idempotent (TRACE left out: nobody calls it).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class Retry:
    """How often and when to repeat a two-way call that got no usable answer.

    ``attempts`` counts the first one; it is a maximum, the call's deadline may end the
    call sooner. Before attempt n+1 the caller waits ``backoff * 2**(n-1)`` seconds, at
    most ``backoff_max``, still listening for a late answer. Each attempt but the last
    waits for the first reply item ``attempt_timeout`` seconds if given, else an equal
    share of the time left; the last waits until the deadline.
    """

    attempts: int = 3
    backoff: float = 0.2
    backoff_max: float = 5.0
    #: Repeat a call whose attempt got no reply in its share of the time.
    on_timeout: bool = True
    #: Repeat a call whose reply has one of these statuses (not on the last attempt).
    statuses: frozenset[int] = frozenset({502, 503, 504})
    #: Retry even calls that are not safe to repeat (POST, PATCH without a key).
    unsafe: bool = False
    attempt_timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or isinstance(self.attempts, bool):
            raise SettingsError(f"Retry.attempts: must be a whole number, got {self.attempts!r}")
        if self.attempts < 1:
            raise SettingsError(f"Retry.attempts: must be >= 1, got {self.attempts!r}")
        for name in ("backoff", "backoff_max"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise SettingsError(f"Retry.{name}: must be a number of seconds >= 0")
        if self.attempt_timeout is not None and self.attempt_timeout <= 0:
            raise SettingsError("Retry.attempt_timeout: must be a number of seconds > 0")
        object.__setattr__(self, "statuses", frozenset(self.statuses))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after attempt number ``attempt`` before the next one."""
        return float(min(self.backoff * 2 ** (attempt - 1), self.backoff_max))

    def share(self, time_left: float, attempts_left: int) -> float:
        """Seconds one attempt waits for its first reply item, out of ``time_left``."""
        if attempts_left <= 1:
            return time_left
        if self.attempt_timeout is not None:
            return min(self.attempt_timeout, time_left)
        return time_left / attempts_left

    def allows(self, request: Request) -> bool:
        """True if ``request`` may be sent more than once under this policy."""
        return self.attempts > 1 and (self.unsafe or is_safe(request))


def is_safe(request: Request) -> bool:
    """An idempotent method, an ``Idempotency-Key`` header, or an ordering key."""
    if request.method in IDEMPOTENT_METHODS or request.key is not None:
        return True
    return any(name.lower() == b"idempotency-key" and value for name, value in request.headers)
