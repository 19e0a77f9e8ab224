"""Who is calling: a verified token of a session that is not revoked. Used by the interceptor in
every service and by the realtime service's WebSocket handshake. CPU only: the keys and the
revocation set are kept current in the background."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import grpc

from posmesh.common.errors import Unauthenticated
from posmesh.common.pubsub import ChannelListener
from posmesh.common.redis import create_redis
from posmesh.common.revocation_follower import RevocationBatch, RevocationFollower, RevocationSource
from posmesh.common.revocations import (
    RevocationSet,
    SessionRevocation,
    revocation_lifetime_seconds,
)
from posmesh.common.settings import Settings
from posmesh.common.tokens import (
    Claims,
    JwksRefresher,
    KeySet,
    TokenVerifier,
    jwks_from_http_body,
    session_revoked,
)

# A staff session on a till that was idle past its restaurant's lock (services/auth/devices.py):
# its tokens are refused with SESSION_LOCKED, which a till answers with the PIN pad.
IDLE_LOCKED = "IDLE_LOCKED"


def session_locked() -> Unauthenticated:
    return Unauthenticated("SESSION_LOCKED", "the till was idle too long; sign in with your PIN "
                           "again", action="PIN_LOGIN")


class Authenticator:
    def __init__(self, verifier: TokenVerifier, revocations: RevocationSet) -> None:
        self.verifier = verifier
        self.revocations = revocations

    def verify_signature(self, token: str) -> Claims:
        """Signature, algorithm, issuer, audience and expiry; no I/O."""
        return self.verifier.verify(token)

    async def authenticate(self, token: str) -> Claims:
        """verify_signature plus the revocation check (the local set: no I/O either); raises
        Unauthenticated with a reason."""
        claims = self.verifier.verify(token)
        reason = self.revocations.reason(claims.sid)
        if reason is not None:
            if reason == IDLE_LOCKED:
                raise session_locked()
            raise session_revoked()
        return claims


def build_verifier(settings: Settings, keys: KeySet, refresher: JwksRefresher | None = None) -> TokenVerifier:
    return TokenVerifier(
        keys,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway_seconds=settings.jwt_leeway_seconds,
        on_unknown_kid=refresher.request_refresh if refresher else None,
    )


def local_revocations(settings: Settings) -> RevocationSet:
    return RevocationSet(lifetime_seconds=revocation_lifetime_seconds(settings),
                         max_entries=settings.revocation_set_max_entries)


def follow_revocations(settings: Settings, revocations: RevocationSet, source: RevocationSource,
                       listener: ChannelListener | None = None) -> RevocationFollower:
    """The follower of `revocations`. Without `listener` it subscribes on a Redis connection of
    its own; a process that listens to other channels too passes its listener (and starts it)."""
    owned = listener is None
    if listener is None:
        listener = ChannelListener(lambda: create_redis(settings, socket_timeout=None))
    return RevocationFollower(revocations, source, listener,
                              poll_seconds=settings.revocation_poll_seconds,
                              resync_seconds=settings.revocation_resync_seconds,
                              owns_listener=owned)


class AuthRevocationSource:
    """AuthAdminService.ListRevokedSessions, every page: what services other than auth load their
    revocation set from (they never read auth's schema)."""

    PAGE_SIZE = 5000
    TIMEOUT_SECONDS = 3.0

    def __init__(self, auth_channel: grpc.aio.Channel) -> None:
        from posmesh.auth.v1 import auth_pb2_grpc

        self._stub = auth_pb2_grpc.AuthAdminServiceStub(auth_channel)

    async def revoked_since(self, since: datetime | None) -> RevocationBatch:
        from posmesh.auth.v1 import auth_pb2

        revocations: list[SessionRevocation] = []
        read_time: datetime | None = None
        page_token = ""
        while True:
            request = auth_pb2.ListRevokedSessionsRequest(page_size=self.PAGE_SIZE,
                                                          page_token=page_token)
            if since is not None:
                request.since.FromDatetime(since)
            reply = await self._stub.ListRevokedSessions(request, timeout=self.TIMEOUT_SECONDS)
            if read_time is None:
                read_time = reply.read_time.ToDatetime(tzinfo=timezone.utc)
            revocations += [
                SessionRevocation(item.session_id, item.user_id, item.restaurant_id, item.reason,
                                  item.revoke_time.seconds + item.revoke_time.nanos / 1e9)
                for item in reply.revoked_sessions]
            page_token = reply.next_page_token
            if not page_token:
                return RevocationBatch(revocations, read_time)


@dataclass
class RemoteAuth:
    """What a service other than auth needs from it, kept current in the background."""

    authenticator: Authenticator
    jwks: JwksRefresher
    revocations: RevocationFollower

    async def stop(self) -> None:
        await self.revocations.stop()
        await self.jwks.stop()


async def remote_authenticator(settings: Settings, auth_channel: grpc.aio.Channel, *,
                               listener: ChannelListener | None = None) -> RemoteAuth:
    """For services other than auth: keys from the auth service's GetJwks, refreshed in the
    background (and soon after a token with an unknown kid); the revocation set loaded from auth
    and followed on the revocation channel (`listener`: see follow_revocations). Returns once
    both were loaded, or tried for a few seconds. Call `stop()` on shutdown."""
    from posmesh.auth.v1 import auth_pb2, auth_pb2_grpc

    stub = auth_pb2_grpc.AuthServiceStub(auth_channel)

    async def fetch() -> dict:
        body = await stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=3)
        return jwks_from_http_body(body.data)

    keys = KeySet()
    refresher = JwksRefresher(keys, fetch, interval_seconds=settings.jwks_refresh_seconds)
    await refresher.start()
    revocations = local_revocations(settings)
    follower = follow_revocations(settings, revocations, AuthRevocationSource(auth_channel),
                                  listener)
    await follower.start()
    return RemoteAuth(Authenticator(build_verifier(settings, keys, refresher), revocations),
                      refresher, follower)
