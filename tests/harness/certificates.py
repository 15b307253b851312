"""TLS for the tests: a throw-away CA, server and client certificates made with the cryptography package."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cryptography is imported only when certificates are made (tls_certs skips without it)
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey


@dataclass
class TLSFiles:
    """PEM files of a throw-away CA, a server certificate for localhost/127.0.0.1/::1 and a client certificate."""

    directory: Path
    ca_cert: Path
    ca_key: EllipticCurvePrivateKey | None  # None when another interpreter made them (make_tls_files_with)
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    maker: str | None = None  # the interpreter that made them, when not this one (make_tls_files_with)

    def client_context(self, with_cert: bool = False) -> ssl.SSLContext:
        """A client context that trusts the test CA (and presents the client certificate if asked)."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        if with_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context

    def issue(self, name: str, common_name: str, *, server: bool = True, password: bytes | None = None
              ) -> tuple[Path, Path]:
        """A new certificate signed by the test CA (fresh key, fresh serial): (cert path, key path)."""
        if self.maker is not None:
            _run_with(self.maker, "from harness.certificates import issue_with_ca_file as f; "
                      f"f(Path({str(self.directory)!r}), {name!r}, {common_name!r}, {server!r}, {password!r})")
            return self.directory / f"{name}.pem", self.directory / f"{name}.key"
        return _issue(self.directory, name, common_name, self.ca_cert, self.ca_key, server=server,
                      password=password)


def _new_key() -> EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())  # ECDSA: fast handshakes on a busy test machine


def _write_key(path: Path, key: EllipticCurvePrivateKey, password: bytes | None = None) -> None:
    from cryptography.hazmat.primitives import serialization

    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))


def _issue(directory: Path, name: str, common_name: str, ca_cert_path: Path | None,
           ca_key: EllipticCurvePrivateKey | None, *,
           server: bool = True, password: bytes | None = None) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "calc tests"),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    if ca_cert_path is None:  # the CA itself
        issuer, signing_key = subject, key
    else:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        if ca_key is None:
            raise ValueError("a certificate signed by a CA needs the CA's key")
        issuer, signing_key = ca_cert.subject, ca_key
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2)))
    if ca_cert_path is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
    # Key identifiers: Python 3.13+ clients verify with VERIFY_X509_STRICT, which refuses a chain
    # without them ("Missing Authority Key Identifier").
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False)
    certificate = builder.sign(signing_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key, password)
    return cert_path, key_path


def make_tls_files(directory: Path) -> TLSFiles:
    """In ``directory``: a CA, and a server (CN localhost) and a client certificate (CN alice) it signed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

    ca_cert, ca_key_path = _issue(directory, "ca", "calc test CA", None, None)
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    if not isinstance(ca_key, EllipticCurvePrivateKey):
        raise TypeError(f"the test CA's key should be the ECDSA key _new_key made, not {type(ca_key).__name__}")
    server_cert, server_key = _issue(directory, "server", "localhost", ca_cert, ca_key)
    client_cert, client_key = _issue(directory, "client", "alice", ca_cert, ca_key, server=False)
    return TLSFiles(directory, ca_cert, ca_key, server_cert, server_key, client_cert, client_key)


def make_tls_files_with(python: str, directory: Path) -> TLSFiles:
    """The same files, made by another interpreter that has cryptography (the free-threaded lane has none:
    no wheel for it); ``issue`` then asks that interpreter too."""
    _run_with(python, f"from harness.certificates import make_tls_files; make_tls_files(Path({str(directory)!r}))")
    return TLSFiles(directory, directory / "ca.pem", None, directory / "server.pem", directory / "server.key",
                    directory / "client.pem", directory / "client.key", maker=python)


def issue_with_ca_file(directory: Path, name: str, common_name: str, server: bool, password: bytes | None) -> None:
    """``TLSFiles.issue`` in the interpreter that made the files, with the CA's key read from its file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, EllipticCurvePrivateKey)
    _issue(directory, name, common_name, directory / "ca.pem", ca_key, server=server, password=password)


def _run_with(python: str, code: str) -> None:
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}  # a GIL build refuses PYTHON_GIL=0
    script = f"import sys; from pathlib import Path; sys.path.insert(0, {str(Path(__file__).parent.parent)!r}); {code}"
    subprocess.run([python, "-c", script], check=True, timeout=120, env=env)
