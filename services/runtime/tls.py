"""TLS for the bus: a local CA and a server certificate for a deployment (`refbus certs`), the files a
nats-server is given, and the context a client trusts the CA with (docs/decisions/0025-tls.md).

One folder holds `ca.pem`, `ca.key`, `server.pem` and `server.key`. The server certificate serves
clients and routes alike (routes verify each other both ways, so it is good for both ends of a TLS
connection); clients prove who they are with their nkey, not a certificate. Private keys are written
whole, readable by their owner only.
"""

import ipaddress
import logging
import os
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from refbus.services.runtime.secret_files import write_replacing

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
ALWAYS_NAMED = ("localhost", "127.0.0.1")
"Every server certificate names these: the embedded server and the loopback cluster answer there."
CA_DAYS = 3650
"The CA outlives the server certificates it signs: renewing one keeps every client's trust."
SERVER_VARIABLES = ("REFBUS_TLS_CERT", "REFBUS_TLS_KEY", "REFBUS_TLS_CA")
"What a deployment's nats-server config reads its `tls {}` files from (deploy/cluster/, deploy/compose/)."
TRUSTED_CA = "REFBUS_TLS_CA, else <secrets>/tls/ca.pem"
"Where a client finds the CA it trusts (Settings.tls_context), as the messages say it."
PLAIN_REFUSED = f"the server does not ask for TLS, but this client trusts a CA ({TRUSTED_CA}): refusing plain text"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$)(\*\.)?{_LABEL}(\.{_LABEL})*$")
"A hostname, or a wildcard for one level of names (*.nats-headless: each pod of a StatefulSet)."


class CertError(ValueError):
    """Certificates that cannot be made or used; the message names the file or the value, in one line."""


@dataclass(frozen=True)
class ServerTls:
    """The files a nats-server needs for TLS: its certificate and key, and the CA its routes trust."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    @classmethod
    def in_folder(cls, folder: Path) -> "ServerTls | None":
        """The server files `refbus certs` wrote to `folder`, or None when there are none."""
        found = cls(folder / SERVER_CERT, folder / SERVER_KEY, folder / CA_CERT)
        return found if all(path.is_file() for path in (found.cert_file, found.key_file, found.ca_file)) else None

    def env(self) -> dict[str, str]:
        """The environment a deploy config's `tls {}` blocks read (SERVER_VARIABLES)."""
        return dict(zip(SERVER_VARIABLES, (str(self.cert_file.resolve()), str(self.key_file.resolve()),
                                           str(self.ca_file.resolve())), strict=True))

    def server_args(self) -> tuple[str, ...]:
        """nats-server's flags for TLS on the client port (any config; routes need a config block)."""
        return ("--tls", "--tlscert", str(self.cert_file.resolve()), "--tlskey", str(self.key_file.resolve()))


@dataclass(frozen=True)
class CertsMade:
    folder: Path
    ca_kept: bool
    "The CA was already there and is kept: clients that trust it need nothing new."
    hosts: tuple[str, ...]
    "The names the server certificate is good for."
    not_after: datetime


class _QuietTlsClose(logging.Filter):
    """asyncio warns at every TLS connection's close that nats-py's protocol returns True from
    eof_received(): noise that says nothing is wrong, and the commands must print clear lines only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received()" not in record.getMessage()


_QUIET_TLS_CLOSE = _QuietTlsClose()


def client_context(ca_file: Path) -> ssl.SSLContext:
    """A client's TLS context trusting the CA in `ca_file` (and nothing else): the server's name is
    checked against the certificate, TLS 1.2 at least."""
    logging.getLogger("asyncio").addFilter(_QUIET_TLS_CLOSE)
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
    except FileNotFoundError:
        raise CertError(f"no CA certificate at {ca_file}") from None
    except (ssl.SSLError, OSError, ValueError):
        raise CertError(f"{ca_file} does not hold a PEM CA certificate") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def upgraded(nc: "NATS") -> bool:
    """Whether `nc`'s connection runs over TLS (nats-py upgrades only when the server asks it to)."""
    writer = getattr(nc._transport, "_io_writer", None)
    return writer is not None and writer.get_extra_info("ssl_object") is not None


def describe_failure(exc: BaseException) -> str:
    """A failed TLS connection in a few words, with what to do."""
    text = str(exc)
    if text == PLAIN_REFUSED:
        return text
    if "certificate verify failed" in text and ("mismatch" in text or "match" in text):
        return f"TLS refused: the server's certificate does not name this host (refbus certs --host NAME) ({text})"
    if "certificate verify failed" in text:
        return (f"TLS refused: the server's certificate is not signed by the CA this client trusts ({TRUSTED_CA}; "
                f"refbus certs) ({text})")
    return f"TLS failed ({text})"


def check_hosts(hosts: Sequence[str]) -> tuple[str, ...]:
    """ALWAYS_NAMED and `hosts`, each once; CertError naming the first that is no hostname nor IP address."""
    for host in hosts:
        if not _is_ip(host) and not _HOSTNAME.match(host):
            raise CertError(f"--host {host!r} is neither a hostname (letters, digits, '-', '.', a leading '*.') "
                            "nor an IP address")
    return tuple(dict.fromkeys((*ALWAYS_NAMED, *hosts)))


def make_certs(out: Path, hosts: Sequence[str] = (), days: int = 365, *, force: bool = False) -> CertsMade:
    """A CA in `out` (kept when there is one, unless `force`) and a server certificate for `hosts`
    (plus ALWAYS_NAMED), valid `days` days, signed by it. CertError says what failed, in one line."""
    if days < 1:
        raise CertError(f"--days must be at least 1, got {days}")
    names = check_hosts(hosts)
    if out.exists() and not out.is_dir():
        raise CertError(f"{out} is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise CertError(f"cannot make {out}: {exc.strerror or exc}") from None
    if not out.is_dir() or not os.access(out, os.W_OK | os.X_OK):
        raise CertError(f"cannot write to {out}: not a writable directory")
    now = datetime.now(UTC)
    kept = None if force else _existing_ca(out)
    if kept is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key, now, max(CA_DAYS, days))
        _write(out / CA_KEY, _private_pem(ca_key), private=True)
        _write(out / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
    else:
        ca_key, ca_cert = kept
    if ca_cert.not_valid_after_utc < now + timedelta(days=days):
        raise CertError(f"the CA in {out / CA_CERT} expires {ca_cert.not_valid_after_utc:%Y-%m-%d}, before the "
                        f"server certificate would: use fewer --days or --force a new CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _server_certificate(server_key, ca_key, ca_cert, names, now, days)
    _write(out / SERVER_KEY, _private_pem(server_key), private=True)
    _write(out / SERVER_CERT, server_cert.public_bytes(serialization.Encoding.PEM))
    return CertsMade(out, kept is not None, names, server_cert.not_valid_after_utc)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _existing_ca(out: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
    cert_file, key_file = out / CA_CERT, out / CA_KEY
    if not cert_file.exists() and not key_file.exists():
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertError(f"{out} holds half a CA (no {Path(str(exc.filename)).name}): --force makes a new one") from None
    except ValueError:
        raise CertError(f"{out} holds a CA that cannot be read: --force makes a new one") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CertError(f"{out / CA_KEY} is not the key of {out / CA_CERT}: --force makes a new CA")
    return key, cert


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    try:
        write_replacing(path, data, 0o600 if private else 0o644)  # a private key owner-only from its first byte
    except OSError as exc:
        raise CertError(f"cannot write {path}: {exc.strerror or exc}") from None


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "refbus"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: datetime, days: int) -> x509.Certificate:
    name = _name("refbus local CA")
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
    names: tuple[str, ...], now: datetime, days: int,
) -> x509.Certificate:
    alternative = [x509.IPAddress(ipaddress.ip_address(n)) if _is_ip(n) else x509.DNSName(n) for n in names]
    return (
        x509.CertificateBuilder()
        .subject_name(_name("refbus-nats")).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        # Client auth too: a route dials its peers with this same certificate, and they verify it.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
