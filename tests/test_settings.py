"""Settings: one object, from code or KOURIER_* env, failing early and naming the setting."""

from __future__ import annotations

import pytest

from kourier.errors import SettingsError
from kourier.settings import Secret, Settings


def test_defaults_name_the_topics() -> None:
    """Topic and group names derive from the prefix and the service name."""
    s = Settings()
    assert s.request_topic("orders") == "kourier.orders.requests"
    assert s.dead_letter_topic("orders") == "kourier.orders.dead-letters"
    assert s.reply_topic == "kourier.replies"
    assert s.group_for("orders") == "kourier.orders"


def test_environment_variables_are_read_and_typed() -> None:
    """KOURIER_* variables fill fields with the right types; overrides win."""
    s = Settings.from_env(
        {
            "KOURIER_BOOTSTRAP_SERVERS": "a:1,b:2",
            "KOURIER_CONCURRENCY": "7",
            "KOURIER_DEFAULT_TIMEOUT": "1.5",
            "KOURIER_CREATE_TOPICS": "false",
        },
        concurrency=9,
    )
    assert s.bootstrap_servers == "a:1,b:2"
    assert s.concurrency == 9
    assert s.default_timeout == 1.5
    assert s.create_topics is False


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"KOURIER_CONCURRENCY": "many"}, "concurrency"),
        ({"KOURIER_CONCURRENCY": "0"}, "concurrency"),
        ({"KOURIER_BOOTSTRAP_SERVERS": "nohostport"}, "bootstrap_servers"),
        ({"KOURIER_DEFAULT_TIMEOUT": "-1"}, "default_timeout"),
        ({"KOURIER_SECURITY_PROTOCOL": "TLS"}, "security_protocol"),
        ({"KOURIER_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "sasl_mechanism"),
        ({"KOURIER_TOPIC_PREFIX": "bad prefix"}, "topic_prefix"),
        ({"KOURIER_SSL_CAFILE": "/nonexistent/ca.pem"}, "ssl_cafile"),
        ({"KOURIER_CREATE_TOPICS": "perhaps"}, "create_topics"),
        ({"KOURIER_KAFKA_CLIENT": "kafka-python"}, "kafka_client"),
        ({"KOURIER_HEARTBEAT_INTERVAL": "0"}, "heartbeat_interval"),
        ({"KOURIER_WAIT_FOR_INSTANCE": "-1"}, "wait_for_instance"),
        ({"KOURIER_CONSUMPTION": "shared"}, "consumption"),
    ],
)
def test_invalid_settings_fail_naming_the_setting(env: dict[str, str], names: str) -> None:
    """Each invalid value raises SettingsError whose message starts with the setting."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(names)


def test_passwords_never_show() -> None:
    """The SASL password is masked in repr and str, yet usable."""
    s = Settings.from_env(
        {
            "KOURIER_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KOURIER_SASL_MECHANISM": "SCRAM-SHA-256",
            "KOURIER_SASL_USERNAME": "svc",
            "KOURIER_SASL_PASSWORD": "hunter2-very-secret",
        }
    )
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s)
    assert isinstance(s.sasl_password, Secret)
    assert s.sasl_password.reveal() == "hunter2-very-secret"


@pytest.mark.parametrize("name", ["", "-x", "a b", "a.b", "x" * 102])
def test_bad_service_names_are_refused(name: str) -> None:
    """Service names are checked before they become topic names."""
    with pytest.raises(SettingsError, match="service"):
        Settings().request_topic(name)


def test_consumption_is_ordered_unless_queue_is_asked_for() -> None:
    """Services consume in ordered mode by default; KOURIER_CONSUMPTION=queue selects queue."""
    assert Settings().consumption == "ordered"
    assert Settings.from_env({"KOURIER_CONSUMPTION": "queue"}).consumption == "queue"
