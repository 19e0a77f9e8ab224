"""Mutual TLS inside the mesh: who a process is, where its certificate lives, and the credentials
its gRPC server, its gRPC channels and the realtime WebSocket listener use.

Every process holds a certificate from the project's mesh CA naming it with a SPIFFE-style URI
(`spiffe://posmesh.local/service/auth`, ... `/service/edge` for Envoy) and a DNS name
(`auth.posmesh.local`) its callers check. Servers require a client certificate from the same CA;
a plaintext connection, or one with a certificate from another CA, fails its handshake. Files
are re-read when they change (`posmesh certs rotate`): servers present and accept the new ones on
the next handshake, channels open new connections with them (docs/security.md).
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from posmesh.common.settings import Settings

log = logging.getLogger(__name__)

TRUST_DOMAIN = "posmesh.local"
EDGE = "edge"
SERVICES = ("auth", "staff", "orders", "realtime")
IDENTITIES = (*SERVICES, EDGE)
_SPIFFE_PREFIX = f"spiffe://{TRUST_DOMAIN}/service/"
# Files are checked for changes at most this often (a stat per file).
RELOAD_CHECK_SECONDS = 1.0


def spiffe_id(name: str) -> str:
    return _SPIFFE_PREFIX + name


def name_of(spiffe: str) -> str | None:
    """'auth' for spiffe://posmesh.local/service/auth; None for anything else."""
    if spiffe.startswith(_SPIFFE_PREFIX):
        name = spiffe[len(_SPIFFE_PREFIX):]
        return name if name and "/" not in name else None
    return None


def server_name(name: str) -> str:
    """The DNS name in `name`'s certificate that its callers verify (auth.posmesh.local)."""
    return f"{name}.{TRUST_DOMAIN}"


@dataclass(frozen=True)
class MeshFiles:
    """One identity's key and certificate and the CA bundle it trusts."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def stamp(self) -> tuple:
        """Changes whenever one of the files is replaced (rotation writes by rename)."""
        stamps = []
        for path in (self.ca_file, self.cert_file, self.key_file):
            try:
                info = path.stat()
                stamps.append((info.st_ino, info.st_mtime_ns, info.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA bundle, certificate, key): a key and certificate that belong together (a
        rotation caught half-way is read again)."""
        for _ in range(20):
            before = self.stamp()
            data = (self.ca_file.read_bytes(), self.cert_file.read_bytes(), self.key_file.read_bytes())
            if self.stamp() == before and _pair_matches(data[1], data[2]):
                return data
            time.sleep(0.05)
        raise RuntimeError(f"{self.cert_file} and {self.key_file} do not belong together")


def _pair_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError:
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    return cert.public_key().public_bytes(pem, spki) == key.public_key().public_bytes(pem, spki)


def mesh_dir(settings: Settings) -> Path:
    return settings.mesh_certs_dir or settings.certs_dir / "mesh"


def files_for(settings: Settings, name: str) -> MeshFiles:
    """`name`'s files: MESH_CA_FILE / MESH_CERT_FILE / MESH_KEY_FILE when set (a container's
    secrets), else `<mesh dir>/ca.pem`, `<name>.pem`, `<name>-key.pem`."""
    folder = mesh_dir(settings)
    return MeshFiles(settings.mesh_ca_file or folder / "ca.pem",
                     settings.mesh_cert_file or folder / f"{name}.pem",
                     settings.mesh_key_file or folder / f"{name}-key.pem")


class _Watched:
    """The files' contents, re-read when they change (checked at most once a second)."""

    def __init__(self, files: MeshFiles) -> None:
        self.files = files
        self._stamp = files.stamp()
        self.data = files.read()
        self.generation = 0
        self._checked = time.monotonic()

    def refresh(self) -> bool:
        """True when the files changed since the last call (and were read again)."""
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return False
        self._checked = now
        stamp = self.files.stamp()
        if stamp == self._stamp:
            return False
        try:
            data = self.files.read()
        except (OSError, RuntimeError) as exc:
            log.warning("mesh certificate files changed but cannot be read yet: %s", exc)
            return False
        self._stamp, self.data = stamp, data
        self.generation += 1
        log.info("mesh certificate reloaded", extra={"cert_file": str(self.files.cert_file)})
        return True


def server_credentials(files: MeshFiles) -> grpc.ServerCredentials:
    """Client certificates required and verified against the CA bundle; the files are re-read
    on change (grpc asks the fetcher before each handshake)."""
    watched = _Watched(files)

    def config(data: tuple[bytes, bytes, bytes]) -> grpc.ServerCertificateConfiguration:
        ca, cert, key = data
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        return config(watched.data) if watched.refresh() else None

    return grpc.dynamic_ssl_server_credentials(config(watched.data), fetch,
                                               require_client_authentication=True)


def channel_credentials(data: tuple[bytes, bytes, bytes]) -> grpc.ChannelCredentials:
    ca, cert, key = data
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


class ReloadingCredentials:
    """Channel credentials for one identity that follow its files: `current()` says which
    generation to connect with (posmesh/common/clients.py makes a new channel on a change)."""

    def __init__(self, files: MeshFiles) -> None:
        self._watched = _Watched(files)
        self._credentials = channel_credentials(self._watched.data)

    def current(self) -> tuple[int, grpc.ChannelCredentials]:
        if self._watched.refresh():
            self._credentials = channel_credentials(self._watched.data)
        return self._watched.generation, self._credentials


def peer_spiffe_id(ctx: grpc.aio.ServicerContext, auth: dict | None = None) -> str | None:
    """The SPIFFE id in the verified client certificate of this call (None on a plaintext or
    certificate-less connection). `auth`: the call's auth_context(), when already read."""
    auth = auth if auth is not None else (ctx.auth_context() or {})
    for key in ("peer_spiffe_id", "x509_subject_alternative_name"):
        for value in auth.get(key, ()):
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            if text.startswith("spiffe://"):
                return text
    return None


def peer_name(ctx: grpc.aio.ServicerContext) -> str | None:
    """'staff' when the caller presented staff's certificate."""
    spiffe = peer_spiffe_id(ctx)
    return name_of(spiffe) if spiffe else None


class ServerSSLContext:
    """An ssl.SSLContext for a TLS listener that is not gRPC (the realtime WebSocket port):
    client certificates required; changed files are loaded into it before a later handshake
    (connections made after that present the new certificate and trust the new CA bundle)."""

    def __init__(self, files: MeshFiles) -> None:
        self._files = files
        self._checked = time.monotonic()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        context.set_alpn_protocols(["http/1.1"])
        self.context = context
        self._stamp = self._load()
        # Called at every handshake that names a server (Envoy sends the realtime's name).
        context.sni_callback = self._before_handshake

    def _load(self) -> tuple:
        stamp = self._files.stamp()
        ca, _, _ = self._files.read()
        self.context.load_verify_locations(cadata=ca.decode())
        self.context.load_cert_chain(self._files.cert_file, self._files.key_file)
        return stamp

    def _before_handshake(self, sock, server_name, context) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return
        self._checked = now
        if self._files.stamp() == self._stamp:
            return
        try:
            self._stamp = self._load()
        except (OSError, RuntimeError, ssl.SSLError) as exc:
            log.warning("mesh certificate files changed but cannot be loaded yet: %s", exc)
            return
        log.info("mesh certificate reloaded", extra={"cert_file": str(self._files.cert_file)})


def peer_name_of_transport(transport) -> str | None:
    """The mesh name in the client certificate of an asyncio TLS transport."""
    cert = transport.get_extra_info("peercert") if transport is not None else None
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "URI" and value.startswith("spiffe://"):
            return name_of(value)
    return None
