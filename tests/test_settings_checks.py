"""Settings say what is wrong: misspelt names, any-case choices, contradictions, extras."""

from __future__ import annotations

import builtins
import dataclasses
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kourier import settings as settings_module
from kourier.errors import SettingsError
from kourier.settings import OTHER_ENV_NAMES, Secret, Settings, unknown_names, warn_unknown_names
from kourier.settings_reference import OTHERS, render, undocumented
from kourier.transports import kafka_transport

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "_warned", set())


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        ("KOURIER_BOOTSTRAP_SERVER", "KOURIER_BOOTSTRAP_SERVERS"),
        ("KOURIER_PARTITONS", "KOURIER_PARTITIONS"),
        ("KOURIER_KAFKA_CLIENTS", "KOURIER_KAFKA_CLIENT"),
        ("KOURIER_HEALTHPORT", "KOURIER_HEALTH_PORT"),
    ],
)
def test_misspelt_name_warns_naming_the_closest(
    name: str, closest: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A misspelt KOURIER_* variable is logged as a warning that names the closest name."""
    with caplog.at_level(logging.WARNING, logger="kourier.settings"):
        Settings.from_env({name: "x"})
    messages = [r.getMessage() for r in caplog.records if r.name == "kourier.settings"]
    assert len(messages) == 1
    assert name in messages[0]
    assert f"did you mean {closest}?" in messages[0]


def test_each_misspelt_name_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """Reading the environment again (client, then service) does not repeat a warning."""
    env = {"KOURIER_PARTITONS": "3", "KOURIER_CONCURENCY": "2"}
    with caplog.at_level(logging.WARNING, logger="kourier.settings"):
        Settings.from_env(env)
        Settings.from_env(env)
    messages = sorted(r.getMessage() for r in caplog.records if r.name == "kourier.settings")
    assert len(messages) == 2
    assert "KOURIER_CONCURENCY" in messages[0]
    assert "KOURIER_PARTITONS" in messages[1]


def test_names_kourier_reads_outside_settings_do_not_warn() -> None:
    """Every allowed non-setting name, the test and broker families, and settings pass."""
    env = dict.fromkeys(OTHER_ENV_NAMES, "1")
    env.update(
        {
            "KOURIER_TEST_SASL_USERNAME": "u",
            "KOURIER_E2E_DIR": "/x",
            "KOURIER_KAFKA_DIR": "/x",
            "KOURIER_KAFKA_JVM_OPTS": "-Xmx1g",
            "KOURIER_PARTITIONS": "3",
            "PATH": "/bin",
        }
    )
    assert unknown_names(env, Settings) == {}


def test_every_kourier_name_read_in_the_source_is_known() -> None:
    """Each KOURIER_* name the package and scripts read is a setting or on the allow-list."""
    files = [*(ROOT / "src" / "kourier").rglob("*.py"), *(ROOT / "scripts").iterdir()]
    source = "\n".join(p.read_text() for p in files if p.is_file())
    read = set(re.findall(r"[\"'](KOURIER_[A-Z][A-Z0-9_]*[A-Z0-9])[\"']", source))
    assert "KOURIER_HOOKS" in read
    assert unknown_names(dict.fromkeys(read, ""), Settings) == {}


def test_a_name_far_from_any_setting_still_warns(caplog: pytest.LogCaptureFixture) -> None:
    """A KOURIER_* name close to nothing is reported too, pointing at the reference."""
    with caplog.at_level(logging.WARNING, logger="kourier.settings"):
        warn_unknown_names({"KOURIER_ZZZ": "1"})
    assert "KOURIER_ZZZ is not a kourier setting" in caplog.text
    assert "docs/settings.md" in caplog.text


def test_new_fields_are_valid_names_without_a_list() -> None:
    """Valid names come from the dataclass fields, so a field added later is covered."""
    extended = dataclasses.make_dataclass(
        "Extended", [("one_way_time_limit", float, 1.0)], bases=(Settings,), frozen=True
    )
    assert unknown_names({"KOURIER_ONE_WAY_TIME_LIMIT": "2"}, extended) == {}


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"KOURIER_SECURITY_PROTOCOL": "ssl"}, "security_protocol", "SSL"),
        ({"KOURIER_KAFKA_CLIENT": "Confluent"}, "kafka_client", "confluent"),
        (
            {
                "KOURIER_SECURITY_PROTOCOL": "sasl_ssl",
                "KOURIER_SASL_MECHANISM": "scram-sha-512",
                "KOURIER_SASL_USERNAME": "u",
                "KOURIER_SASL_PASSWORD": "p",
            },
            "sasl_mechanism",
            "SCRAM-SHA-512",
        ),
    ],
)
def test_choices_are_read_in_any_case(env: dict[str, str], field: str, value: str) -> None:
    """Enum-like settings accept any case and are stored in their canonical spelling."""
    assert getattr(Settings.from_env(env), field) == value


@pytest.mark.parametrize(
    ("changes", "starts", "says"),
    [
        ({"sasl_mechanism": "PLAIN"}, "sasl_mechanism", "PLAINTEXT, which does not use SASL"),
        ({"sasl_username": "u"}, "sasl_username", "SASL_PLAINTEXT or SASL_SSL"),
        ({"sasl_password": "p"}, "sasl_password", "does not use SASL"),
        ({"ssl_cafile": __file__}, "ssl_cafile", "PLAINTEXT, which does not use TLS"),
        ({"ssl_certfile": __file__}, "ssl_certfile", "SSL or SASL_SSL"),
        (
            {"security_protocol": "SSL", "ssl_keyfile": __file__},
            "ssl_keyfile",
            "set ssl_certfile too",
        ),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "u",
                "sasl_password": "p",
                "ssl_cafile": __file__,
            },
            "ssl_cafile",
            "SASL_PLAINTEXT, which does not use TLS",
        ),
    ],
)
def test_contradictory_settings_are_errors(changes: dict[str, Any], starts: str, says: str) -> None:
    """A setting the chosen protocol would ignore is an error naming it and the protocol."""
    with pytest.raises(SettingsError) as info:
        Settings(**changes)
    assert str(info.value).startswith(starts)
    assert says in str(info.value)


def test_consistent_tls_and_sasl_settings_pass() -> None:
    """SASL_SSL with its mechanism, credentials and files is accepted."""
    s = Settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password=Secret("p"),
        ssl_cafile=__file__,
        ssl_certfile=__file__,
        ssl_keyfile=__file__,
    )
    assert s.security_protocol == "SASL_SSL"


@pytest.mark.parametrize("root_path", ["api", "/api/", "/"])
def test_root_path_must_be_a_clean_prefix(root_path: str) -> None:
    """root_path starts with '/' and has no trailing '/', as an ASGI root_path."""
    with pytest.raises(SettingsError, match=r"^root_path"):
        Settings(root_path=root_path)


def test_missing_confluent_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """KOURIER_KAFKA_CLIENT=confluent without confluent-kafka says which extra to install."""
    real_import = builtins.__import__

    def without_confluent(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "confluent_kafka" or name.startswith("confluent_kafka."):
            raise ModuleNotFoundError(f"No module named {name!r}", name="confluent_kafka")
        return real_import(name, *args, **kwargs)

    for module in [
        m for m in sys.modules if m.startswith(("confluent_kafka", "kourier.transports.confluent"))
    ]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(builtins, "__import__", without_confluent)
    with pytest.raises(SettingsError) as info:
        kafka_transport(Settings(kafka_client="confluent"))
    assert "pip install 'kourier[confluent]'" in str(info.value)
    assert str(info.value).startswith("kafka_client")


def test_extras_named_in_messages_exist_in_pyproject() -> None:
    """Each kourier[extra] an error message names is declared in pyproject.toml."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "kourier").rglob("*.py"))
    for extra in set(re.findall(r"kourier\[(\w+)\]", source)):
        assert re.search(rf"^{extra} = \[", pyproject, re.M), extra


def test_settings_reference_is_up_to_date() -> None:
    """docs/settings.md is exactly what kourier.settings_reference renders from Settings."""
    committed = (ROOT / "docs" / "settings.md").read_text()
    assert committed == render(), (
        "docs/settings.md is stale: python -m kourier.settings_reference > docs/settings.md"
    )


def test_every_setting_is_described() -> None:
    """Each Settings field has a #: description for the reference."""
    assert undocumented() == []


def test_reference_names_every_other_variable() -> None:
    """The reference's table of other variables lists each allowed non-setting name."""
    for name in OTHER_ENV_NAMES:
        assert f"`{name}`" in OTHERS


def test_reference_module_runs_as_a_script() -> None:
    """python -m kourier.settings_reference prints the reference."""
    out = subprocess.run(
        [sys.executable, "-m", "kourier.settings_reference"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == render()


def test_an_empty_sasl_variable_counts_as_unset() -> None:
    """KOURIER_SASL_MECHANISM= (empty, as compose files write it) with PLAINTEXT passes."""
    assert Settings.from_env({"KOURIER_SASL_MECHANISM": ""}).security_protocol == "PLAINTEXT"
