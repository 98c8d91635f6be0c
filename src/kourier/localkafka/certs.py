"""Certificates for the TLS listeners, and the lines that tell clients how to connect.

``keytool`` (from the JDK that runs the broker) makes a self-signed CA, a server
certificate (SAN ``localhost`` and ``127.0.0.1``, so clients that check host names accept
it) and a client certificate (``CN=kourier``), all PKCS12; the CA, the client certificate
and its key are also written as PEM for Python's ``ssl``. They are test credentials:
the store password is fixed and printed. This module must never be used for anything but
a local test broker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from kourier.localkafka.config import SASL_MECHANISMS, SASL_PASSWORD, SASL_USER, STORE_PASSWORD
from kourier.localkafka.console import LocalKafkaError, say
from kourier.localkafka.layout import Node

FILES = ("ca.p12", "ca.pem", "truststore.p12", "server.p12", "client.p12", "client.pem")
CLIENT_KEY = "client.key"

# Used when openssl is missing: the JDK can write the key itself (java runs a source file).
_PEM_EXPORT_JAVA = """\
import java.io.FileInputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.Key;
import java.security.KeyStore;
import java.util.Base64;

public class PemExport {
    public static void main(String[] args) throws Exception {
        char[] pw = args[1].toCharArray();
        KeyStore ks = KeyStore.getInstance("PKCS12");
        try (FileInputStream in = new FileInputStream(args[0])) { ks.load(in, pw); }
        Key key = ks.getKey(args[2], pw);
        String b64 = Base64.getMimeEncoder(64, "\\n".getBytes()).encodeToString(key.getEncoded());
        Files.writeString(Path.of(args[3]),
            "-----BEGIN PRIVATE KEY-----\\n" + b64 + "\\n-----END PRIVATE KEY-----\\n");
    }
}
"""

_DAYS = ["-validity", "3650"]
_RSA = ["-keyalg", "RSA", "-keysize", "2048"]


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LocalKafkaError(f"{what} failed:\n  {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


def ensure_certs(folder: Path, java: str, keytool: str | None) -> Path:
    """The certificates in ``folder``, made now if any is missing (kept across starts)."""
    if all((folder / name).exists() for name in (*FILES, CLIENT_KEY)):
        return folder
    if keytool is None:
        raise LocalKafkaError(
            "keytool was not found next to java or on PATH: --security needs a full JDK "
            "(not only a JRE) of Java 17 or newer"
        )
    say("creating a test CA, server and client certificates with keytool...")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tool = _Keytool(keytool, folder)
    tool.make_ca()
    tool.make_signed(
        "server", "CN=localhost", "serverAuth,clientAuth", "dns:localhost,ip:127.0.0.1"
    )
    tool.make_signed("client", f"CN={SASL_USER}", "clientAuth", None)
    (folder / "client.crt").rename(folder / "client.pem")
    (folder / "server.crt").rename(folder / "server.pem")
    export_key_pem(folder / "client.p12", "client", folder / CLIENT_KEY, java)
    return folder


class _Keytool:
    def __init__(self, keytool: str, folder: Path) -> None:
        self.base = [keytool, "-noprompt"]
        self.folder = folder

    def store(self, name: str) -> list[str]:
        return [
            "-keystore",
            str(self.folder / name),
            "-storetype",
            "PKCS12",
            "-storepass",
            STORE_PASSWORD,
        ]

    def run(self, what: str, *args: str) -> None:
        _run([*self.base, *args], f"keytool ({what})")

    def make_ca(self) -> None:
        ca_pem = str(self.folder / "ca.pem")
        self.run(
            "CA",
            "-genkeypair",
            "-alias",
            "ca",
            "-dname",
            "CN=kourier test CA",
            *_RSA,
            *_DAYS,
            "-ext",
            "bc:c=ca:true",
            "-ext",
            "KeyUsage:c=keyCertSign,cRLSign",
            *self.store("ca.p12"),
            "-keypass",
            STORE_PASSWORD,
        )
        self.run(
            "export CA",
            "-exportcert",
            "-rfc",
            "-alias",
            "ca",
            "-file",
            ca_pem,
            *self.store("ca.p12"),
        )
        self.run(
            "truststore",
            "-importcert",
            "-alias",
            "ca",
            "-file",
            ca_pem,
            *self.store("truststore.p12"),
        )

    def make_signed(self, name: str, dname: str, usage: str, san: str | None) -> None:
        """A key pair in ``name.p12`` whose certificate the CA signed, with its chain."""
        store = self.store(f"{name}.p12")
        csr, crt = self.folder / f"{name}.csr", self.folder / f"{name}.crt"
        self.run(
            f"{name} key",
            "-genkeypair",
            "-alias",
            name,
            "-dname",
            dname,
            *_RSA,
            *_DAYS,
            *store,
            "-keypass",
            STORE_PASSWORD,
        )
        self.run(f"{name} request", "-certreq", "-alias", name, "-file", str(csr), *store)
        ext = [
            "-ext",
            "KeyUsage:c=digitalSignature,keyEncipherment",
            "-ext",
            f"ExtendedKeyUsage={usage}",
        ]
        if san:
            ext += ["-ext", f"SAN={san}"]
        self.run(
            f"sign {name}",
            "-gencert",
            "-rfc",
            "-alias",
            "ca",
            "-infile",
            str(csr),
            "-outfile",
            str(crt),
            *_DAYS,
            *ext,
            *self.store("ca.p12"),
        )
        chain = self.folder / f"{name}.chain.pem"
        chain.write_text(crt.read_text() + (self.folder / "ca.pem").read_text())
        self.run(f"import {name} chain", "-importcert", "-alias", name, "-file", str(chain), *store)
        csr.unlink()
        chain.unlink()


def export_key_pem(p12: Path, alias: str, out: Path, java: str) -> None:
    """Write the private key of a PKCS12 entry as an unencrypted PKCS#8 PEM file."""
    openssl = None if os.environ.get("KOURIER_KAFKA_NO_OPENSSL") else shutil.which("openssl")
    if openssl:
        bags = out.with_suffix(".bags")
        passin = f"pass:{STORE_PASSWORD}"
        cmd = [openssl, "pkcs12", "-in", str(p12), "-passin", passin, "-nocerts", "-nodes"]
        _run([*cmd, "-out", str(bags)], "openssl pkcs12")
        _run([openssl, "pkey", "-in", str(bags), "-out", str(out)], "openssl pkey")
        bags.unlink()
    else:
        source = out.parent / "PemExport.java"
        source.write_text(_PEM_EXPORT_JAVA)
        _run([java, str(source), str(p12), STORE_PASSWORD, alias, str(out)], "PEM export (java)")
        source.unlink()
    out.chmod(0o600)


def security_lines(nodes: list[Node], folder: Path) -> list[tuple[str, str]]:
    """The ``KOURIER_TEST_*`` lines: the SASL and TLS listeners, credentials, files."""
    return [
        ("KOURIER_TEST_SASL_BOOTSTRAP_SERVERS", _addresses(n.sasl_port for n in nodes)),
        ("KOURIER_TEST_SASL_MECHANISMS", ",".join(SASL_MECHANISMS)),
        ("KOURIER_TEST_SASL_USERNAME", SASL_USER),
        ("KOURIER_TEST_SASL_PASSWORD", SASL_PASSWORD),
        ("KOURIER_TEST_SSL_BOOTSTRAP_SERVERS", _addresses(n.ssl_port for n in nodes)),
        ("KOURIER_TEST_MTLS_BOOTSTRAP_SERVERS", _addresses(n.mtls_port for n in nodes)),
        ("KOURIER_TEST_SSL_CAFILE", str(folder / "ca.pem")),
        ("KOURIER_TEST_SSL_CERTFILE", str(folder / "client.pem")),
        ("KOURIER_TEST_SSL_KEYFILE", str(folder / CLIENT_KEY)),
        ("KOURIER_TEST_SSL_TRUSTSTORE", str(folder / "truststore.p12")),
        ("KOURIER_TEST_SSL_KEYSTORE", str(folder / "client.p12")),
        ("KOURIER_TEST_SSL_STORE_PASSWORD", STORE_PASSWORD),
    ]


def _addresses(ports: Iterable[int]) -> str:
    return ",".join(f"127.0.0.1:{port}" for port in ports)
