"""One settings object for everything about the broker, from code or ``KOURIER_*`` env.

It must never log or repr a secret: ``sasl_password`` is kept in a ``Secret`` whose
repr and str are masked.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kourier.errors import SettingsError

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,100}$")
_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
KAFKA_CLIENTS = ("aiokafka", "confluent")
CONSUMPTION_MODES = ("ordered", "queue")


class Secret:
    """A string that never shows itself in logs, reprs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    """Everything kourier needs to know about the broker and its topics.

    Build it in code (``Settings(bootstrap_servers=...)``) or from the environment
    (``Settings.from_env()``: each field is read from ``KOURIER_<FIELD>``, upper case).
    Invalid values raise ``SettingsError`` naming the setting.
    """

    #: Kafka brokers to connect to, as ``host:port[,host:port...]``.
    bootstrap_servers: str = "127.0.0.1:9092"
    #: The Kafka client library under the transport: "aiokafka" or "confluent"
    #: (confluent-kafka, librdkafka). See docs/design.md for the measurements.
    kafka_client: str = "aiokafka"
    #: Prefix of every topic and consumer group kourier names.
    topic_prefix: str = "kourier."
    #: Partitions of the request and dead-letter topics kourier creates.
    partitions: int = 6
    #: Replication factor of the topics kourier creates.
    replication_factor: int = 1
    #: Partitions of the shared reply topic; each caller instance reads one of them.
    reply_partitions: int = 12
    #: Consumer group of a service; default ``<topic_prefix><service>``.
    group: str | None = None
    #: Client id kourier's producers and consumers give the broker (seen in its logs).
    client_id: str = "kourier"
    #: Handlers running at once in one service instance.
    concurrency: int = 64
    #: The path prefix the app is mounted under, as uvicorn's ``--root-path``: the ASGI
    #: ``root_path`` of every request, for apps behind a proxy that strips it.
    root_path: str = ""
    #: ``kourier run`` logs one line per handled request on the ``kourier.access`` logger.
    access_log: bool = True
    #: How a service takes its requests: "ordered" (a consumer group: per-key order,
    #: instances <= partitions) or "queue" (a Kafka share group: no order, any number of
    #: instances, each record acknowledged on its own; needs kafka_client "confluent").
    #: docs/design.md compares the two.
    consumption: str = "ordered"
    #: Seconds a caller waits for a reply when the call does not say.
    default_timeout: float = 5.0
    #: Largest request record value (bytes); Kafka's default limit is about 1 MB.
    max_request_bytes: int = 1_000_000
    #: Largest reply record value (bytes); a larger response body is split into items.
    max_reply_bytes: int = 900_000
    #: Producer batching delay (ms): 0 favours latency.
    linger_ms: int = 0
    #: Seconds between offset commits of finished work.
    commit_interval: float = 0.2
    #: Seconds a stopping service waits for in-flight handlers; then they are cancelled.
    drain_timeout: float = 30.0
    #: Seconds a one-way handler may run (each attempt); past it the run is cancelled
    #: and counts as a failure: retried, then dead-lettered.
    message_timeout: float = 60.0
    #: Attempts at a one-way request whose handler fails (5xx or an exception), the
    #: first included; after the last, the message goes to the dead-letter topic.
    retry_attempts: int = 3
    #: Seconds before the first retry; doubled each time, up to ``retry_backoff_max``.
    retry_backoff: float = 0.2
    #: Longest wait (seconds) between two retries of a one-way request.
    retry_backoff_max: float = 5.0
    #: Seconds a handled request's response is kept to answer a repeat of it
    #: (same ``Idempotency-Key`` header or request id); 0 turns this off.
    idempotency_window: float = 300.0
    #: Create missing topics at start (needs the right to create topics).
    create_topics: bool = True
    #: Seconds between a service instance's heartbeats in the registry; an instance
    #: whose last heartbeat is 3 intervals old is no longer live.
    heartbeat_interval: float = 10.0
    #: Seconds a two-way call waits for a live instance of its service when there is
    #: none (a rolling restart), within its timeout; 0 fails at once (ServiceUnavailable).
    wait_for_instance: float = 0.0
    #: How to talk to the brokers: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    #: (any case).
    security_protocol: str = "PLAINTEXT"
    #: SASL mechanism, with a SASL_* protocol: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    sasl_mechanism: str | None = None
    #: SASL user name, with a SASL_* protocol.
    sasl_username: str | None = None
    #: SASL password, with a SASL_* protocol; never shown in logs or reprs.
    sasl_password: Secret | None = field(default=None, repr=True)
    #: PEM file of the certificate authorities to trust, with SSL or SASL_SSL.
    ssl_cafile: str | None = None
    #: PEM file of this client's certificate (mutual TLS), with SSL or SASL_SSL.
    ssl_certfile: str | None = None
    #: PEM file of the private key of ``ssl_certfile``; needs ``ssl_certfile``.
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sasl_password, str):
            object.__setattr__(self, "sasl_password", Secret(self.sasl_password))
        _normalise_choices(self)
        self._validate()
        _check_consistency(self)

    def _validate(self) -> None:
        if not self.bootstrap_servers.strip():
            raise SettingsError("bootstrap_servers: must name at least one host:port")
        for server in _kafka_servers(self.bootstrap_servers):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise SettingsError(f"bootstrap_servers: {server.strip()!r} is not host:port")
        if self.kafka_client not in KAFKA_CLIENTS:
            raise SettingsError(
                f"kafka_client: {self.kafka_client!r} is not one of {', '.join(KAFKA_CLIENTS)}"
            )
        if self.consumption not in CONSUMPTION_MODES:
            raise SettingsError(
                f"consumption: {self.consumption!r} is not one of {', '.join(CONSUMPTION_MODES)}"
            )
        if self.topic_prefix and not _TOPIC_NAME.match(self.topic_prefix):
            raise SettingsError(
                f"topic_prefix: {self.topic_prefix!r} may hold only letters, digits, '.', '_', '-'"
            )
        positive = (
            "partitions",
            "replication_factor",
            "reply_partitions",
            "concurrency",
            "max_request_bytes",
            "max_reply_bytes",
            "retry_attempts",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingsError(f"{name}: must be a whole number >= 1, got {value!r}")
        if not isinstance(self.idempotency_window, int | float) or self.idempotency_window < 0:
            raise SettingsError(
                f"idempotency_window: must be a number of seconds >= 0, "
                f"got {self.idempotency_window!r}"
            )
        for name in (
            "default_timeout",
            "commit_interval",
            "drain_timeout",
            "message_timeout",
            "retry_backoff",
            "retry_backoff_max",
            "heartbeat_interval",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise SettingsError(f"{name}: must be a number of seconds > 0, got {value!r}")
        if not isinstance(self.wait_for_instance, int | float) or self.wait_for_instance < 0:
            raise SettingsError(
                f"wait_for_instance: must be a number of seconds >= 0, "
                f"got {self.wait_for_instance!r}"
            )
        if self.linger_ms < 0:
            raise SettingsError(f"linger_ms: must be >= 0, got {self.linger_ms!r}")
        if self.security_protocol not in _SECURITY_PROTOCOLS:
            raise SettingsError(
                f"security_protocol: {self.security_protocol!r} is not one of "
                + ", ".join(_SECURITY_PROTOCOLS)
            )
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in _SASL_MECHANISMS:
                raise SettingsError(
                    f"sasl_mechanism: {self.sasl_mechanism!r} is not one of "
                    + ", ".join(_SASL_MECHANISMS)
                )
            if not self.sasl_username or self.sasl_password is None:
                raise SettingsError("sasl_username: SASL needs sasl_username and sasl_password")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise SettingsError(f"{name}: no file at {path!r}")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise SettingsError(
                f"root_path: {self.root_path!r} must start with '/' and not end with one "
                "(e.g. /api/v1), or be empty"
            )
        if self.group is not None and not _TOPIC_NAME.match(self.group):
            raise SettingsError(f"group: {self.group!r} is not a valid group name")

    # -- names -------------------------------------------------------------------------

    def request_topic(self, service: str) -> str:
        """The topic a service consumes its requests from."""
        check_service_name(service)
        return f"{self.topic_prefix}{service}.requests"

    def dead_letter_topic(self, service: str) -> str:
        check_service_name(service)
        return f"{self.topic_prefix}{service}.dead-letters"

    def cancel_topic(self, service: str) -> str:
        """The topic callers publish cancels to; every instance of the service reads it."""
        check_service_name(service)
        return f"{self.topic_prefix}{service}.cancels"

    @property
    def reply_topic(self) -> str:
        return f"{self.topic_prefix}replies"

    def group_for(self, service: str) -> str:
        check_service_name(service)
        return self.group or f"{self.topic_prefix}{service}"

    # -- construction ------------------------------------------------------------------

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``KOURIER_<FIELD>`` variables; explicit ``overrides`` win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"KOURIER_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        warn_unknown_names(env, cls)
        return cls(**values)


#: ``bootstrap_servers`` of an in-process broker (``kourier.testing``): ``memory://NAME``.
MEMORY_SCHEME = "memory://"


def _kafka_servers(bootstrap_servers: str) -> list[str]:
    """The host:port entries to check; none for ``memory://NAME``, whose name is checked."""
    if not bootstrap_servers.startswith(MEMORY_SCHEME):
        return bootstrap_servers.split(",")
    name = bootstrap_servers.removeprefix(MEMORY_SCHEME)
    if not _TOPIC_NAME.fullmatch(name):  # fullmatch: "$" alone lets a final newline in
        raise SettingsError(
            f"bootstrap_servers: {bootstrap_servers!r} must be memory://NAME, the name made "
            "of letters, digits, '.', '_', '-'"
        )
    return []


def check_topic_name(topic: str) -> str:
    if not isinstance(topic, str) or not _TOPIC_NAME.match(topic) or topic in (".", ".."):
        raise SettingsError(
            f"topic: {topic!r} may hold only letters, digits, '.', '_', '-' (1-200 characters)"
        )
    return topic


def check_service_name(service: str) -> str:
    if not isinstance(service, str) or not _SERVICE_NAME.match(service):
        raise SettingsError(
            f"service: {service!r} must start with a letter or digit and hold only "
            "letters, digits, '_' and '-' (at most 101 characters)"
        )
    return service


def _parse(name: str, annotation: object, raw: str) -> Any:
    kind = str(annotation)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("bool"):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise SettingsError(
            f"{name}: KOURIER_{name.upper()}={raw!r} is not a valid {kind.split(' ')[0]}"
        ) from None
    if "Secret" in kind:
        return Secret(raw)
    return raw


# -- choices, contradictions, misspelt names ---------------------------------------------


def _normalise_choices(settings: Settings) -> None:
    """Enum-like values in any case: ``sasl_ssl`` is SASL_SSL, ``Confluent`` confluent."""
    for name, fold in (
        ("kafka_client", str.lower),
        ("security_protocol", str.upper),
        ("sasl_mechanism", str.upper),
    ):
        value = getattr(settings, name)
        if isinstance(value, str):
            object.__setattr__(settings, name, fold(value.strip()))


def _check_consistency(settings: Settings) -> None:
    """Settings that would be silently ignored together are an error naming both."""
    protocol = settings.security_protocol
    if not protocol.startswith("SASL"):
        for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
            if getattr(settings, name) not in (None, ""):  # VAR= in a compose file is unset
                raise SettingsError(
                    f"{name}: is set but security_protocol is {protocol}, which does not use "
                    "SASL; set security_protocol to SASL_PLAINTEXT or SASL_SSL, "
                    f"or unset {name}"
                )
    if not protocol.endswith("SSL"):
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(settings, name) not in (None, ""):
                raise SettingsError(
                    f"{name}: is set but security_protocol is {protocol}, which does not use "
                    f"TLS; set security_protocol to SSL or SASL_SSL, or unset {name}"
                )
    if settings.ssl_keyfile is not None and settings.ssl_certfile is None:
        raise SettingsError(
            "ssl_keyfile: a private key without its certificate; set ssl_certfile too"
        )


#: ``KOURIER_*`` variables that kourier reads but that are not settings: the one place
#: that lists them, so that ``warn_unknown_names`` does not call them misspelt. Add a
#: name here when code reads a new one outside ``Settings``.
OTHER_ENV_NAMES = frozenset(
    {
        "KOURIER_SERVICE",  # kourier run: the service name
        "KOURIER_HOOKS",  # kourier run: service hooks
        "KOURIER_HEALTH_PORT",  # kourier run: the probes' port
        "KOURIER_LOG_FORMAT",  # text or json logs
        "KOURIER_CACHE_DIR",  # the local broker's download cache
    }
)
#: Families of such variables: kourier's tests', and the local broker's own options.
_TEST_PREFIXES = ("KOURIER_TEST_", "KOURIER_E2E_")
_BROKER_PREFIX = "KOURIER_KAFKA_"

_warned: set[str] = set()
_logger = logging.getLogger("kourier.settings")


def unknown_names(environ: Mapping[str, str], cls: type[Settings]) -> dict[str, str | None]:
    """Each ``KOURIER_*`` name in ``environ`` that kourier does not read -> the closest
    valid variable name (or None if nothing is close)."""
    valid = {f"KOURIER_{f.name.upper()}" for f in dataclasses.fields(cls)}
    known = valid | OTHER_ENV_NAMES
    found: dict[str, str | None] = {}
    for name in environ:
        if not name.startswith("KOURIER_") or name in known:
            continue
        if name.startswith(_TEST_PREFIXES):
            continue
        # The local broker's family is its own, unless a name is a near miss of a
        # setting (KOURIER_KAFKA_CLIENTS).
        if name.startswith(_BROKER_PREFIX) and not difflib.get_close_matches(
            name, sorted(valid), n=1, cutoff=0.9
        ):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
        found[name] = close[0] if close else None
    return found


def warn_unknown_names(environ: Mapping[str, str], cls: type[Settings] = Settings) -> None:
    """Log one warning per misspelt ``KOURIER_*`` name, once per process."""
    for name, close in sorted(unknown_names(environ, cls).items()):
        if name in _warned:
            continue
        _warned.add(name)
        hint = f"did you mean {close}?" if close else "see docs/settings.md for the settings"
        _logger.warning("%s is not a kourier setting and is ignored; %s", name, hint)
