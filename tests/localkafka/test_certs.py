"""Test certificates for the TLS listeners, and the lines that tell clients about them."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from kourier.localkafka import java
from kourier.localkafka.certs import ensure_certs, security_lines
from kourier.localkafka.console import LocalKafkaError
from kourier.localkafka.layout import make_nodes


def test_missing_keytool_asks_for_a_jdk(tmp_path: Path) -> None:
    """Without keytool, --security fails asking for a full JDK."""
    with pytest.raises(LocalKafkaError, match="needs a full JDK"):
        ensure_certs(tmp_path / "certs", "java", None)


def test_security_lines_name_every_listener(tmp_path: Path) -> None:
    """The KOURIER_TEST_* lines list each node's SASL, TLS and mutual-TLS address and the
    credential files."""
    lines = dict(security_lines(make_nodes(tmp_path, 9092, 3), tmp_path / "certs"))
    assert lines["KOURIER_TEST_SASL_BOOTSTRAP_SERVERS"] == (
        "127.0.0.1:9192,127.0.0.1:9193,127.0.0.1:9194"
    )
    assert lines["KOURIER_TEST_SSL_BOOTSTRAP_SERVERS"].startswith("127.0.0.1:9292,")
    assert lines["KOURIER_TEST_MTLS_BOOTSTRAP_SERVERS"].endswith(",127.0.0.1:9394")
    assert lines["KOURIER_TEST_SSL_KEYFILE"] == str(tmp_path / "certs" / "client.key")
    assert lines["KOURIER_TEST_SASL_MECHANISMS"] == "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("key_export", ["openssl", "java"])
def test_certificates_load_in_python(
    key_export: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CA and the client certificate and key that keytool made (the key written as
    PEM by openssl, or by Java where openssl is missing) load into Python's ssl, and a
    second call keeps them rather than making new ones."""
    if key_export == "java":
        monkeypatch.setenv("KOURIER_KAFKA_NO_OPENSSL", "1")
    elif shutil.which("openssl") is None:
        pytest.skip("no openssl on this machine: the Java export is tested instead")
    found = java.find_java()
    if found is None or java.find_tool(found, "keytool") is None:
        pytest.skip("no JDK with keytool on this machine: the certificates need one")
    folder = ensure_certs(tmp_path / "certs", found, java.find_tool(found, "keytool"))
    context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    context.load_cert_chain(str(folder / "client.pem"), str(folder / "client.key"))
    assert (folder / "client.key").stat().st_mode & 0o777 == 0o600
    before = (folder / "ca.pem").read_text()
    assert ensure_certs(folder, found, None) == folder  # kept: keytool is not needed again
    assert (folder / "ca.pem").read_text() == before
    shutil.rmtree(folder)
