"""Who is calling: a verified token plus a live session. Used by the interceptor in every service
and by the realtime service's WebSocket handshake."""

from __future__ import annotations

import grpc

from posmesh.common.settings import Settings
from posmesh.common.tokens import (
    Claims,
    JwksRefresher,
    KeySet,
    RevocationChecker,
    TokenVerifier,
    jwks_from_http_body,
    session_revoked,
)


class Authenticator:
    def __init__(self, verifier: TokenVerifier, revocations: RevocationChecker) -> None:
        self.verifier = verifier
        self.revocations = revocations

    def verify_signature(self, token: str) -> Claims:
        """Signature, algorithm, issuer, audience and expiry; no I/O."""
        return self.verifier.verify(token)

    async def authenticate(self, token: str) -> Claims:
        """verify_signature plus the revocation check; raises Unauthenticated with a reason."""
        claims = self.verifier.verify(token)
        if await self.revocations.is_revoked(claims.sid):
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


async def remote_authenticator(settings: Settings, redis, auth_channel: grpc.aio.Channel) -> tuple[Authenticator, JwksRefresher]:
    """For services other than auth: keys come from the auth service's GetJwks, refreshed in the
    background (and soon after a token with an unknown kid). Call `refresher.stop()` on shutdown."""
    from posmesh.auth.v1 import auth_pb2, auth_pb2_grpc

    stub = auth_pb2_grpc.AuthServiceStub(auth_channel)

    async def fetch() -> dict:
        body = await stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=3)
        return jwks_from_http_body(body.data)

    keys = KeySet()
    refresher = JwksRefresher(keys, fetch, interval_seconds=settings.jwks_refresh_seconds)
    await refresher.start()
    return Authenticator(build_verifier(settings, keys, refresher), RevocationChecker(redis)), refresher
