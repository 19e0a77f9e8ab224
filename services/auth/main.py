"""Wires the auth service: migrations, key ring, database, Redis, the mail sender, the gRPC server."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

from posmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from posmesh.common import db, security_events
from posmesh.common.authn import (
    Authenticator,
    build_verifier,
    follow_revocations,
    local_revocations,
)
from posmesh.common.admission import Admission
from posmesh.common.interceptors import server_interceptors
from posmesh.common.mail import MailSender, MailTemplates
from posmesh.common.migrations import run_migrations
from posmesh.common.redis import create_redis
from posmesh.common.server import run_grpc_service
from posmesh.common.settings import Settings, get_settings
from posmesh.common.tokens import KeySet
from posmesh.common.user_events import AUTH_STREAM, UserEventPublisher
from services.auth import keys
from services.auth.access_tokens import AccessTokenIssuer
from services.auth.accounts import Accounts
from services.auth.enrollment_hashing import EnrollmentHashing
from services.auth.hashing_pause import MachineHashingPause
from services.auth.identity_store import IdentityStore
from services.auth.memberships import Memberships
from services.auth.passwords import PasswordHashing
from services.auth.rate_limits import LoginLimiter
from services.auth.request_limits import RequestLimits
from services.auth.revocation_log import RevocationLog
from services.auth.security_log import SecurityLog
from services.auth.security_sink import DatabaseSecurityEventSink
from services.auth.servicer import AuthAdminServicer, AuthServicer
from services.auth.sessions import RevocationPublisher, SessionCache
from services.auth.signin import SignIn
from services.auth.store import AuthStore

log = logging.getLogger(__name__)

SCHEMA = "auth"
KEY_CHECK_INTERVAL_SECONDS = 1.0
HASHING_PAUSE_FILE = "auth-hashing-pause.json"  # in <data dir>/run/
# Ended sessions (and their spent refresh tokens) are kept this long for investigations.
KEEP_ENDED_SESSIONS = timedelta(days=7)


async def _keep_keys_fresh(keyring: keys.KeyRing, keyset: KeySet) -> None:
    """Follows `posmesh keys rotate` (a file change) and the scheduled publish/sign times."""
    published = keyring.jwks()
    while True:
        await asyncio.sleep(KEY_CHECK_INTERVAL_SECONDS)
        keyring.reload_if_changed(min_interval=0)
        current = keyring.jwks()
        if current != published:
            keyset.load_jwks(current)
            published = current
            log.info("verification keys now %s", keyset.kids())


async def _purge_periodically(store: AuthStore, interval_seconds: float) -> None:
    while True:
        await asyncio.sleep(interval_seconds)
        now = datetime.now(timezone.utc)
        try:
            counts = await store.purge(now=now, keep_ended_sessions_until=now - KEEP_ENDED_SESSIONS)
            if any(counts.values()):
                log.info("purged auth data", extra=counts)
        except Exception as exc:  # housekeeping must not take the service down
            log.warning("auth purge failed: %r", exc)


async def serve(settings: Settings) -> None:
    await run_migrations(settings, Path(__file__).parent, SCHEMA)
    await asyncio.to_thread(keys.ensure_keys, settings)
    keyring = keys.KeyRing(settings)
    await asyncio.to_thread(keyring.load)
    keyset = KeySet()
    keyset.load_jwks(keyring.jwks())

    engine = db.create_engine(settings, SCHEMA)
    redis = create_redis(settings)
    store = AuthStore(engine)
    security_events.configure(DatabaseSecurityEventSink(store))
    # Tokens are verified in-process against this service's own published keys, and checked
    # against the local revocation set, which this service loads from its own database.
    revoked = local_revocations(settings)
    authenticator = Authenticator(build_verifier(settings, keyset), revoked)
    revocation_log = RevocationLog(engine, settings)
    revocation_follower = follow_revocations(settings, revoked, revocation_log)
    # Sign-ins in any auth process of this machine pause every process's new-password hashing.
    hashing_pause = MachineHashingPause(settings.data_dir / "run" / HASHING_PAUSE_FILE)
    enrollment_hashing = EnrollmentHashing.from_settings(settings, machine=hashing_pause)
    sign_in_hashing = PasswordHashing.from_settings(settings, pauses=hashing_pause)
    revocations = RevocationPublisher(redis, settings, revoked)
    user_events = UserEventPublisher(redis, AUTH_STREAM)
    limiter = LoginLimiter(redis, settings)
    sign_in = SignIn(
        settings=settings, store=store, passwords=sign_in_hashing, limiter=limiter,
        issuer=AccessTokenIssuer(settings, keyring), keyring=keyring, authenticator=authenticator,
        cache=SessionCache(redis, settings), revocations=revocations)
    accounts = Accounts(
        settings=settings, store=store, identities=IdentityStore(store),
        sign_in_hashing=sign_in_hashing, enrollment_hashing=enrollment_hashing, limiter=limiter,
        request_limits=RequestLimits(redis, development=settings.is_development),
        templates=MailTemplates(settings),
        revocations=revocations)
    memberships = Memberships(store=store, revocations=revocations, user_events=user_events)

    resynced = await revocations.resync(store)
    log.info("revocation markers re-published for %d recently ended session(s)", resynced)
    revocations.start()
    await revocation_follower.start()
    user_events.start()
    mail_sender = MailSender(settings, engine, SCHEMA)
    mail_sender.start()
    background = [
        asyncio.create_task(_keep_keys_fresh(keyring, keyset), name="auth-keys"),
        asyncio.create_task(_purge_periodically(store, settings.auth_cleanup_interval_seconds),
                            name="auth-purge"),
    ]

    def register(server) -> list[str]:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(sign_in, accounts), server)
        auth_pb2_grpc.add_AuthAdminServiceServicer_to_server(
            AuthAdminServicer(accounts, memberships, SecurityLog(store), revocation_log), server)
        return [auth_pb2.DESCRIPTOR.services_by_name[name].full_name
                for name in ("AuthService", "AuthAdminService")]

    async def on_shutdown() -> None:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await revocations.stop()
        await revocation_follower.stop()
        await user_events.stop()
        await mail_sender.stop()
        await security_events.flush()
        security_events.configure(None)
        sign_in_hashing.close()
        enrollment_hashing.close()
        hashing_pause.close()

    await run_grpc_service("auth", settings, register=register,
                           interceptors=server_interceptors(authenticator, Admission.from_settings(settings)), engine=engine,
                           redis=redis, revocations=revocation_follower,
                           on_shutdown=on_shutdown)


def main() -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(get_settings()))


if __name__ == "__main__":
    main()
