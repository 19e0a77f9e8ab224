"""The mesh CA and one certificate per identity (auth, staff, orders, realtime, edge), made on first
run into `<data dir>/certs/mesh/` (git-ignored) and renewed by `posmesh certs rotate`.

    ca.pem          the trust bundle every process checks peers against
    ca-key.pem      the CA's key (0600): only `posmesh certs` reads it
    <name>.pem      the identity's certificate: URI SAN spiffe://posmesh.local/service/<name>,
                    DNS SANs <name>.posmesh.local, <name>, localhost, IP 127.0.0.1 and ::1
    <name>-key.pem  its key (0600)

Every file is written to a temporary name and renamed into place, so a process re-reading them
(posmesh/common/mesh_tls.py, Envoy's SDS watch on this folder) never sees half a file; the key is
renamed before its certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from posmesh.common.mesh_tls import IDENTITIES, MeshFiles, server_name, spiffe_id

CA_DAYS = 3650
# Short-lived: a leaked key is useful for a month at most. Renewed at start-up when a third of
# the lifetime is left, or at any time by `posmesh certs rotate`.
LEAF_DAYS = 30
_RENEW_WHEN_LEFT = dt.timedelta(days=LEAF_DAYS / 3)
_PEM = serialization.Encoding.PEM


def files(folder: Path, name: str) -> MeshFiles:
    return MeshFiles(folder / "ca.pem", folder / f"{name}.pem", folder / f"{name}-key.pem")


def ensure_mesh_certs(folder: Path, names=IDENTITIES) -> list[str]:
    """The CA and every identity's certificate, made when missing or close to expiry; returns
    the names (re)issued."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _ensure_ca(folder)
    issued = []
    for name in names:
        if not _still_valid(files(folder, name), ca_cert):
            issue(folder, name, ca_cert, ca_key)
            issued.append(name)
    return issued


def rotate(folder: Path, names=IDENTITIES) -> list[str]:
    """A new key and certificate for every identity; running processes pick them up within a
    couple of seconds (new connections use them; open ones finish on the old)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _ensure_ca(folder)
    for name in names:
        issue(folder, name, ca_cert, ca_key)
    return list(names)


def issue(folder: Path, name: str, ca_cert: x509.Certificate, ca_key, *,
          days: int = LEAF_DAYS) -> MeshFiles:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(spiffe_id(name)),
        x509.DNSName(server_name(name)), x509.DNSName(name), x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "posmesh mesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, server_name(name)),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    target = files(folder, name)
    _write(target.key_file, _key_pem(key), secret=True)
    _write(target.cert_file, cert.public_bytes(_PEM))
    return target


def new_ca(common_name: str = "posmesh mesh CA"):
    """A CA certificate and key (also what tests use to make a certificate from another CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "posmesh mesh"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _ensure_ca(folder: Path):
    cert_file, key_file = folder / "ca.pem", folder / "ca-key.pem"
    if cert_file.exists() and key_file.exists():
        cert = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        return cert, key
    cert, key = new_ca()
    _write(key_file, _key_pem(key), secret=True)
    _write(cert_file, cert.public_bytes(_PEM))
    return cert, key


def _still_valid(target: MeshFiles, ca_cert: x509.Certificate) -> bool:
    if not (target.cert_file.exists() and target.key_file.exists()):
        return False
    cert = x509.load_pem_x509_certificate(target.cert_file.read_bytes())
    if cert.issuer != ca_cert.subject:
        return False
    return cert.not_valid_after_utc - _RENEW_WHEN_LEFT > dt.datetime.now(dt.timezone.utc)


def _key_pem(key) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)
