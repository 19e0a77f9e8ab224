"""Development TLS: a local CA and a server certificate for localhost, made once and reused.

Files live in `<data dir>/certs/` (git-ignored): ca.pem (trust this in clients), server.pem
(leaf then CA), server-key.pem. They are regenerated only when missing or within 30 days of expiry.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOSTS = ("localhost",)
IPS = ("127.0.0.1", "::1")
_RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class DevCerts:
    ca_file: Path
    cert_file: Path
    key_file: Path


def ensure_dev_certs(certs_dir: Path) -> DevCerts:
    certs = DevCerts(certs_dir / "ca.pem", certs_dir / "server.pem", certs_dir / "server-key.pem")
    if not _still_valid(certs):
        _generate(certs_dir, certs)
    return certs


def _still_valid(certs: DevCerts) -> bool:
    if not all(path.exists() for path in (certs.ca_file, certs.cert_file, certs.key_file)):
        return False
    leaf = x509.load_pem_x509_certificates(certs.cert_file.read_bytes())[0]
    return leaf.not_valid_after_utc - _RENEW_BEFORE > dt.datetime.now(dt.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "posmesh development"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _generate(certs_dir: Path, certs: DevCerts) -> None:
    certs_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("posmesh development CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(host) for host in HOSTS]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in IPS]
    # 397 days: the longest validity Apple and browsers accept for a leaf certificate.
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=397))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write(certs.key_file, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), secret=True)
    _write(certs.cert_file, leaf.public_bytes(pem) + ca_cert.public_bytes(pem))
    _write(certs.ca_file, ca_cert.public_bytes(pem))
    # The CA key is not kept: nothing else is ever signed with it, so it cannot leak.


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)
