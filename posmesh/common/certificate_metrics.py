"""The expiry of the certificates a process can see, as metrics, for the certificate-expiry alert.

`posmesh_certificate_expiry_timestamp_seconds{certificate}`: the notAfter (Unix seconds) of the
first certificate of each PEM file in the certs dir (<data dir>/certs: the edge's server.pem and
the CA), in the mesh certificates' dir (mesh/: every process's mesh certificate and the mesh CA),
the mesh files this process was given (MESH_CERT_FILE, MESH_CA_FILE) and METRICS_CERTIFICATE_FILES.
The label is the path below the certs dir (`server.pem`, `mesh/orders.pem`), else the file name:
a handful of files, never per request. Files are parsed again only when they change.
Envoy exports its own view as `envoy_server_days_until_first_cert_expiring`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from cryptography import x509
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from posmesh.common.settings import Settings

log = logging.getLogger(__name__)

_PEM_SUFFIXES = (".pem", ".crt")


def _pem_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir()
                  if path.suffix in _PEM_SUFFIXES and not path.stem.endswith("key"))


def certificate_files(settings: Settings) -> dict[str, Path]:
    """label -> file, for every certificate file this process can see."""
    certs_dir = settings.certs_dir
    mesh_dir = settings.mesh_certs_dir or certs_dir / "mesh"
    candidates = [*_pem_files(certs_dir), *_pem_files(mesh_dir),
                  *(path for path in (settings.mesh_cert_file, settings.mesh_ca_file) if path),
                  *(Path(name) for name in settings.metrics_certificate_files)]
    found: dict[str, Path] = {}
    seen: set[Path] = set()
    for path in candidates:
        resolved = path.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        try:
            label = str(resolved.relative_to(certs_dir.resolve()))
        except ValueError:
            label = path.name
        found.setdefault(label, path)
    return found


class CertificateExpiry(Collector):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._parsed: dict[Path, tuple[float, float | None]] = {}  # path -> (mtime, notAfter)

    def _not_after(self, path: Path) -> float | None:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        cached = self._parsed.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        not_after = None
        try:
            data = path.read_bytes()
            if b"-----BEGIN CERTIFICATE-----" in data:  # keys and other PEMs are skipped
                cert = x509.load_pem_x509_certificates(data)[0]
                not_after = cert.not_valid_after_utc.timestamp()
        except (OSError, ValueError) as exc:
            log.warning("could not read certificate %s: %r", path, exc)
        self._parsed[path] = (mtime, not_after)
        return not_after

    def collect(self) -> Iterable:
        family = GaugeMetricFamily(
            "posmesh_certificate_expiry_timestamp_seconds",
            "When a certificate file's (first) certificate expires, Unix seconds.",
            labels=["certificate"])
        for label, path in certificate_files(self._settings).items():
            not_after = self._not_after(path)
            if not_after is not None:
                family.add_metric([label], not_after)
        yield family
