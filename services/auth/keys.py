"""The signing key ring: ES256 keys on disk, published before they sign, kept until they expire.

Layout of `settings.keys_dir` (git-ignored; in production a secret volume shared by every auth
replica):

    keyring.json   [{"kid", "alg", "created_at", "publish_at", "sign_from"}, ...]
    <kid>.pem      the private key (PKCS#8, mode 0600)

The life of a key, all derived from those times and the access-token lifetime:

    publish_at ──(in the JWKS, verifies)── sign_from ──(signs)── next key's sign_from
        ──(still in the JWKS until every token it signed has expired)── retire_at

`rotate(settings)` adds a key that is published now and signs `JWT_KEY_PUBLISH_LEAD_SECONDS`
later, so every verifier (services refreshing the JWKS, Envoy) has it before the first token
it signs arrives. Writers hold an exclusive file lock; the file is replaced atomically; the
running auth service notices the change within a second (`KeyRing.reload_if_changed`).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from posmesh.common.errors import Unavailable
from posmesh.common.settings import Settings

log = logging.getLogger(__name__)

ALGORITHM = "ES256"
KEYRING_FILE = "keyring.json"
LOCK_FILE = ".keyring.lock"
# Files of keys retired longer ago than this are deleted.
PRUNE_AFTER_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class KeyInfo:
    kid: str
    alg: str
    created_at: float
    publish_at: float
    sign_from: float


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    algorithm: str
    private_key: ec.EllipticCurvePrivateKey


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(kid: str, public_key: ec.EllipticCurvePublicKey) -> dict:
    numbers = public_key.public_numbers()
    return {"kty": "EC", "crv": "P-256", "use": "sig", "alg": ALGORITHM, "kid": kid,
            "x": _b64url(numbers.x.to_bytes(32, "big")), "y": _b64url(numbers.y.to_bytes(32, "big"))}


def thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 JWK thumbprint: members in lexicographic order, no whitespace."""
    jwk = public_jwk("", public_key)
    canonical = json.dumps({name: jwk[name] for name in ("crv", "kty", "x", "y")},
                           separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@contextmanager
def _locked(keys_dir: Path) -> Iterator[None]:
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(keys_dir / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_infos(keys_dir: Path) -> list[KeyInfo]:
    path = keys_dir / KEYRING_FILE
    if not path.exists():
        return []
    entries = json.loads(path.read_text())
    return sorted((KeyInfo(**entry) for entry in entries), key=lambda info: info.sign_from)


def _write_infos(keys_dir: Path, infos: list[KeyInfo]) -> None:
    body = json.dumps([asdict(info) for info in sorted(infos, key=lambda i: i.sign_from)], indent=2)
    _write_atomically(keys_dir / KEYRING_FILE, body.encode(), 0o600)


def _new_key(keys_dir: Path, *, now: float, publish_at: float, sign_from: float) -> KeyInfo:
    private_key = ec.generate_private_key(ec.SECP256R1())
    stamp = time.strftime("%Y%m%d", time.gmtime(now))
    kid = f"{stamp}-{thumbprint(private_key.public_key())[:16]}"
    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    _write_atomically(keys_dir / f"{kid}.pem", pem, 0o600)
    return KeyInfo(kid=kid, alg=ALGORITHM, created_at=now, publish_at=publish_at, sign_from=sign_from)


def _verify_window(settings: Settings) -> float:
    """How long after a key stops signing its tokens can still be valid."""
    return settings.access_token_ttl_seconds + settings.jwt_leeway_seconds


def retire_at(infos: list[KeyInfo], index: int, settings: Settings) -> float | None:
    """When key `index` (of `infos` sorted by sign_from) leaves the JWKS; None while it signs."""
    if index + 1 >= len(infos):
        return None
    return infos[index + 1].sign_from + _verify_window(settings)


def ensure_keys(settings: Settings, *, now: float | None = None) -> list[KeyInfo]:
    """First run: one key that is published and signs at once. Later runs: nothing changes."""
    keys_dir = settings.keys_dir
    with _locked(keys_dir):
        infos = _read_infos(keys_dir)
        if not infos:
            now = time.time() if now is None else now
            infos = [_new_key(keys_dir, now=now, publish_at=now, sign_from=now)]
            _write_infos(keys_dir, infos)
            log.info("generated the first signing key %s in %s", infos[0].kid, keys_dir)
        return infos


def rotate(settings: Settings, *, now: float | None = None,
           publish_lead_seconds: float | None = None) -> KeyInfo:
    """Adds a key published now that signs after the lead time; prunes long-retired keys.

    The key that signs today keeps signing until then and keeps verifying for one access-token
    lifetime (plus leeway) after that. Returns the new key. This is `posmesh keys rotate`.
    """
    now = time.time() if now is None else now
    lead = settings.jwt_key_publish_lead_seconds if publish_lead_seconds is None else publish_lead_seconds
    new = add_key(settings, publish_at=now, sign_from=now + max(0.0, lead), now=now)
    log.info("rotated signing keys: %s is published now and signs from %s", new.kid,
             time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(new.sign_from)))
    return new


def add_key(settings: Settings, *, publish_at: float, sign_from: float,
            now: float | None = None) -> KeyInfo:
    """Schedules a new key. It never signs before it is published."""
    now = time.time() if now is None else now
    if sign_from < publish_at:
        raise ValueError("a key must be published before it signs (sign_from >= publish_at)")
    keys_dir = settings.keys_dir
    with _locked(keys_dir):
        infos = _read_infos(keys_dir)
        new = _new_key(keys_dir, now=now, publish_at=publish_at, sign_from=sign_from)
        _write_infos(keys_dir, _prune(keys_dir, infos + [new], settings, now))
    return new


def discard_unpublished(settings: Settings, kid: str, *, now: float | None = None) -> None:
    """Withdraws a scheduled key that is not published yet (a published key may have verifiers
    and, soon, tokens depending on it, so it is refused)."""
    now = time.time() if now is None else now
    keys_dir = settings.keys_dir
    with _locked(keys_dir):
        infos = _read_infos(keys_dir)
        target = next((info for info in infos if info.kid == kid), None)
        if target is None:
            raise KeyError(kid)
        if target.publish_at <= now:
            raise ValueError(f"key {kid} is already published; it can only retire by rotation")
        _write_infos(keys_dir, [info for info in infos if info.kid != kid])
        (keys_dir / f"{kid}.pem").unlink(missing_ok=True)


def _prune(keys_dir: Path, infos: list[KeyInfo], settings: Settings, now: float) -> list[KeyInfo]:
    infos = sorted(infos, key=lambda info: info.sign_from)
    kept = []
    for index, info in enumerate(infos):
        retired = retire_at(infos, index, settings)
        if retired is not None and retired + PRUNE_AFTER_SECONDS < now:
            (keys_dir / f"{info.kid}.pem").unlink(missing_ok=True)
            log.info("deleted signing key %s, retired since %s", info.kid, retired)
            continue
        kept.append(info)
    return kept


def load_private_key(keys_dir: Path, kid: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((keys_dir / f"{kid}.pem").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"signing key {kid} is not an EC key")
    return key


class KeyRing:
    """The keys of `settings.keys_dir` in memory, parsed once; which signs and which are published
    depends only on the clock, so it changes at the scheduled times without a reload."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._dir = settings.keys_dir
        self._infos: list[KeyInfo] = []
        self._keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._jwks_cache: dict[str, dict] = {}
        self._mtime_ns = -1
        self._checked_at = 0.0

    def load(self) -> None:
        path = self._dir / KEYRING_FILE
        mtime_ns = path.stat().st_mtime_ns
        infos = _read_infos(self._dir)
        keys = {info.kid: self._keys.get(info.kid) or load_private_key(self._dir, info.kid)
                for info in infos}
        self._infos, self._keys, self._mtime_ns = infos, keys, mtime_ns
        self._jwks_cache = {kid: public_jwk(kid, key.public_key()) for kid, key in keys.items()}

    def reload_if_changed(self, *, min_interval: float = 1.0) -> bool:
        """Re-reads the key ring when the file changed; stats the file at most once per interval."""
        now = time.monotonic()
        if now - self._checked_at < min_interval:
            return False
        self._checked_at = now
        try:
            changed = (self._dir / KEYRING_FILE).stat().st_mtime_ns != self._mtime_ns
            if changed:
                self.load()
            return changed
        except (OSError, ValueError) as exc:
            log.error("could not reload the signing key ring; keeping the loaded keys: %r", exc)
            return False

    def signing_key(self, now: float | None = None) -> SigningKey:
        now = time.time() if now is None else now
        current = None
        for info in self._infos:  # sorted by sign_from
            if info.sign_from <= now and info.publish_at <= now:
                current = info
        if current is None:
            raise Unavailable("SIGNING_KEY_UNAVAILABLE",
                              "no signing key is active; check the key ring and the clock")
        return SigningKey(current.kid, current.alg, self._keys[current.kid])

    def published(self, now: float | None = None) -> list[KeyInfo]:
        now = time.time() if now is None else now
        out = []
        for index, info in enumerate(self._infos):
            retired = retire_at(self._infos, index, self._settings)
            if info.publish_at <= now and (retired is None or now < retired):
                out.append(info)
        return out

    def jwks(self, now: float | None = None) -> dict:
        return {"keys": [self._jwks_cache[info.kid] for info in self.published(now)]}

    def infos(self) -> list[KeyInfo]:
        return list(self._infos)
