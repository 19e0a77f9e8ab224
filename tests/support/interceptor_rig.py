"""A real in-process gRPC server running the shared interceptor, and real signed tokens for it:
what tests of the interceptor's duties (authorization, admission, deadlines) share."""

from __future__ import annotations

import json
import time
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.rpc import error_details_pb2, status_pb2

from posmesh.common.admission import Admission
from posmesh.common.authn import Authenticator
from posmesh.common.interceptors import server_interceptors
from posmesh.common.revocations import RevocationSet
from posmesh.common.server import SERVER_OPTIONS
from posmesh.common.tokens import KeySet, TokenVerifier

ISSUER, AUDIENCE, KID = "https://issuer.test", "posmesh-test", "test-key-1"
RESTAURANT, OTHER_RESTAURANT = str(uuid.uuid4()), str(uuid.uuid4())


def new_signing_key():
    return ec.generate_private_key(ec.SECP256R1())


def authenticator_for(signing_key, revocations: RevocationSet) -> Authenticator:
    keys = KeySet()
    public_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(signing_key.public_key()))
    keys.load_jwks({"keys": [{**public_jwk, "kid": KID, "alg": "ES256", "use": "sig"}]})
    return Authenticator(TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE, leeway_seconds=5),
                         revocations)


@asynccontextmanager
async def serving(authenticator: Authenticator, register: Callable[[grpc.aio.Server], None], *,
                  admission: Admission | None = None) -> AsyncIterator[grpc.aio.Channel]:
    """A server with the shared interceptor and `register`'s servicers; a channel to it."""
    server = grpc.aio.server(interceptors=server_interceptors(authenticator, admission),
                             options=SERVER_OPTIONS)
    register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


def make_token(signing_key, **overrides) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "sid": str(uuid.uuid4()),
              "restaurant_id": RESTAURANT, "role": "staff", "jti": str(uuid.uuid4()),
              "iat": now, "exp": now + 600}
    claims.update(overrides)
    claims = {key: value for key, value in claims.items() if value is not None}
    return jwt.encode(claims, signing_key, algorithm="ES256", headers={"kid": KID})


def bearer(token: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"), *extra)


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            info = error_details_pb2.ErrorInfo()
            assert status.details[0].Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo in {error!r}")


def error_reason(error: grpc.aio.AioRpcError) -> str:
    return error_info(error).reason


async def call_error(coro) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await coro
    return caught.value
