"""The expiry of the certificates a process can see, as metrics, for the certificate-expiry alert.

`posmesh_certificate_expiry_timestamp_seconds{certificate}`: the notAfter (Unix seconds) of the
first certificate of each PEM file in the certs dir (<data dir>/certs: the edge's server.pem and
the CA, and whatever else is kept there) and in METRICS_CERTIFICATE_FILES. The label is the file
name: a handful of files, never per request. Files are parsed again only when they change.
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


def certificate_files(settings: Settings) -> list[Path]:
    found: list[Path] = []
    certs_dir = settings.certs_dir
    if certs_dir.is_dir():
        found += sorted(path for path in certs_dir.iterdir() if path.suffix in _PEM_SUFFIXES)
    found += [Path(name) for name in settings.metrics_certificate_files]
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
        for path in certificate_files(self._settings):
            not_after = self._not_after(path)
            if not_after is not None:
                family.add_metric([path.name], not_after)
        yield family
