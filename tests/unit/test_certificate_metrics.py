"""Certificate expiry as metrics: every certificate file a process can see (the edge's, the
mesh's, those named in METRICS_CERTIFICATE_FILES), labelled by file, keys and junk skipped."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from posmesh.common.certificate_metrics import CertificateExpiry
from posmesh.common.settings import Settings


def _write_cert(path: Path, not_after: dt.datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, path.stem)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_after - dt.timedelta(days=400)).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = path.with_name(path.stem + "-key.pem")
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


def _expiries(settings: Settings) -> dict[str, float]:
    (family,) = CertificateExpiry(settings).collect()
    return {sample.labels["certificate"]: sample.value for sample in family.samples}


def test_each_certificate_file_is_exported_with_its_expiry(tmp_path: Path):
    edge_expiry = dt.datetime(2030, 1, 2, tzinfo=dt.timezone.utc)
    mesh_expiry = dt.datetime(2029, 6, 1, tzinfo=dt.timezone.utc)
    _write_cert(tmp_path / "certs" / "server.pem", edge_expiry)
    _write_cert(tmp_path / "certs" / "mesh" / "orders.pem", mesh_expiry)
    _write_cert(tmp_path / "elsewhere" / "partner.pem", mesh_expiry)
    (tmp_path / "certs" / "notes.pem").write_text("not a certificate")
    settings = Settings(POSMESH_DATA_DIR=str(tmp_path),
                        METRICS_CERTIFICATE_FILES=str(tmp_path / "elsewhere" / "partner.pem"))

    expiries = _expiries(settings)

    assert expiries == {"server.pem": edge_expiry.timestamp(),
                        "mesh/orders.pem": mesh_expiry.timestamp(),
                        "partner.pem": mesh_expiry.timestamp()}


def test_a_renewed_file_is_read_again(tmp_path: Path):
    path = tmp_path / "certs" / "server.pem"
    _write_cert(path, dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc))
    settings = Settings(POSMESH_DATA_DIR=str(tmp_path))
    collector = CertificateExpiry(settings)
    list(collector.collect())

    renewed = dt.datetime(2031, 1, 1, tzinfo=dt.timezone.utc)
    _write_cert(path, renewed)
    import os
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 10))
    (family,) = collector.collect()

    assert [s.value for s in family.samples] == [renewed.timestamp()]


def test_no_certificates_no_samples(tmp_path: Path):
    assert _expiries(Settings(POSMESH_DATA_DIR=str(tmp_path))) == {}
