"""Helpers for the realtime e2e tests: sockets through the edge, tokens with a chosen expiry, more
sessions of one person, and each realtime process's own health page.

    sock = await edge_socket(stack, "kitchen", party.restaurant_id)
    short = token_expiring(stack, party.staff.access_token, seconds=4)
    tablet = await new_session(edge, party.staff)   # the same person on another device

A session holds one live socket per connection type (a newer one replaces the older), so a test
that wants several live sockets of one person signs them in on several devices.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt

from tests.support.restaurants import Session, login
from tests.support.ws_client import AppSocket


async def new_session(edge: httpx.AsyncClient, member: Session) -> Session:
    """`member` signed in again (another device): the same user and restaurant, its own session."""
    again = await login(edge, member.email, member.restaurant_id, user_id=member.user_id)
    assert again.restaurant_id == member.restaurant_id and again.role == member.role
    return again


async def edge_socket(stack, connection_type: str, restaurant_id: str, **options: Any) -> AppSocket:
    """A socket opened through Envoy over TLS (wss), trusting the dev CA."""
    return await AppSocket.open(stack.edge_url, connection_type, restaurant_id,
                                ca_file=stack.ca_file, **options)


async def signed_in(stack, member, connection_type: str = "pos", *,
                    last_event_id: str | None = None, **socket_options: Any) -> AppSocket:
    """A socket authenticated as the app does it (top-level fields)."""
    sock = await edge_socket(stack, connection_type, member.restaurant_id, **socket_options)
    hello = await sock.authenticate(member.access_token, member.user_id,
                                    last_event_id=last_event_id)
    assert hello["type"] == "auth_success", hello
    return sock


def token_expiring(stack, token: str, *, seconds: float) -> str:
    """The same session, user, restaurant and role as `token`, signed by the auth service's
    current key, expiring `seconds` from now (negative: already expired)."""
    from services.auth.keys import KeyRing

    claims = jwt.decode(token, options={"verify_signature": False})
    now = int(time.time())
    claims["exp"] = now + int(seconds)
    claims["iat"] = min(now, claims["exp"] - 1)
    claims["jti"] = f"{claims['jti']}-{now}-{int(seconds)}"
    keyring = KeyRing(stack.settings)
    keyring.load()
    key = keyring.signing_key()
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm,
                      headers={"kid": key.kid, "typ": "JWT"})


def direct_client(stack) -> httpx.AsyncClient:
    """A client of the realtime processes' WebSocket ports themselves (mutual TLS, holding the
    edge's mesh certificate: the only identity they accept): `https://{ws_addr}/...`."""
    import ssl

    files = stack.mesh_files("edge")
    context = ssl.create_default_context(cafile=str(files.ca_file))
    context.load_cert_chain(files.cert_file, files.key_file)
    return httpx.AsyncClient(timeout=5, verify=context)


async def process_health(stack, ws_addr: str) -> dict:
    """GET /healthz of one realtime process, straight to its WebSocket port."""
    async with direct_client(stack) as client:
        reply = await client.get(f"https://{ws_addr}/healthz")
    reply.raise_for_status()
    return reply.json()
