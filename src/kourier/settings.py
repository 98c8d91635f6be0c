"""One settings object for everything about the broker, from code or ``KOURIER_*`` env.

It must never log or repr a secret: ``sasl_password`` is kept in a ``Secret`` whose
repr and str are masked.
"""

from __future__ import annotations

import dataclasses
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

    bootstrap_servers: str = "127.0.0.1:9092"
    #: The Kafka client library under the transport: "aiokafka" or "confluent"
    #: (confluent-kafka, librdkafka). See docs/design.md for the measurements.
    kafka_client: str = "aiokafka"
    #: Prefix of every topic and consumer group kourier names.
    topic_prefix: str = "kourier."
    #: Partitions and replication of the topics kourier creates.
    partitions: int = 6
    replication_factor: int = 1
    #: Partitions of the shared reply topic; each caller instance reads one of them.
    reply_partitions: int = 12
    #: Consumer group of a service; default ``<topic_prefix><service>``.
    group: str | None = None
    client_id: str = "kourier"
    #: Handlers running at once in one service instance.
    concurrency: int = 64
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
    #: Seconds a stopping service waits for in-flight handlers.
    drain_timeout: float = 30.0
    #: Attempts at a one-way request whose handler fails (5xx or an exception), the
    #: first included; after the last, the message goes to the dead-letter topic.
    retry_attempts: int = 3
    #: Seconds before the first retry; doubled each time, up to ``retry_backoff_max``.
    retry_backoff: float = 0.2
    retry_backoff_max: float = 5.0
    #: Seconds a handled request's response is kept to answer a repeat of it
    #: (same ``Idempotency-Key`` header or request id); 0 turns this off.
    idempotency_window: float = 300.0
    #: Create missing topics at start (needs the right to create topics).
    create_topics: bool = True
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = field(default=None, repr=True)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sasl_password, str):
            object.__setattr__(self, "sasl_password", Secret(self.sasl_password))
        self._validate()

    def _validate(self) -> None:
        if not self.bootstrap_servers.strip():
            raise SettingsError("bootstrap_servers: must name at least one host:port")
        for server in self.bootstrap_servers.split(","):
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
            "retry_backoff",
            "retry_backoff_max",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise SettingsError(f"{name}: must be a number of seconds > 0, got {value!r}")
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
        return cls(**values)


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
