"""One WebSocket: the auth handshake (first message or `Authorization: Bearer` on the upgrade),
the live loop (ping/pong, reauth, errors, floods), token expiry warnings and the close.

A socket is restaurant-scoped (the restaurant's order events) or, on `/ws/{type}/onboarding` or
with a token that has no restaurant yet, user-scoped (the user's own events). A session holds at
most WS_MAX_SOCKETS_PER_SESSION sockets per connection type (session_sockets.py), and a socket
opened without `last_event_id` resumes where its session's previous one got to (resume.py): it
tracks the position the client confirmed (answered pings, completed closes).

Writes never wait: a frame goes straight into the socket's transport unless its unsent buffer is
over WS_SEND_BUFFER_BYTES (then the client is a slow consumer and is closed with 4008), so one
slow phone never holds up the loop that feeds every other screen. Per socket there is the
handler task websockets runs, this object (slots), and two timer handles; nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from posmesh.common import security_events
from posmesh.common.errors import Unauthenticated
from posmesh.common.permissions import MANAGERS
from posmesh.common.tokens import token_expired

from services.realtime import protocol, resume
from services.realtime.limits import LimitPolicy, MessageBudget
from services.realtime.protocol import CloseCode, ProtocolError, Target
from services.realtime.revocations import Revocation

if TYPE_CHECKING:
    from posmesh.common.authn import Authenticator
    from posmesh.common.settings import Settings
    from services.realtime.hub import OrderHub, RestaurantFeed
    from services.realtime.limits import PendingHandshakes
    from services.realtime.metrics import GatewayMetrics
    from services.realtime.resume import ResumeBook
    from services.realtime.session_sockets import SessionSockets

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_SECONDS = 3.0
TOO_MANY_CONNECTIONS_RETRY_MS = 5000
UNANSWERED_PINGS_KEPT = 16


@dataclass(frozen=True, slots=True)
class SocketServices:
    """What every socket of a process shares; built once by the gateway."""

    settings: Settings
    authenticator: Authenticator
    hub: OrderHub
    registry: Any  # presence.ConnectionRegistry: admit / release
    ip_window: Any  # limits.IpAttemptWindow: hit
    pending: PendingHandshakes
    index: ConnectionIndex
    metrics: GatewayMetrics
    sessions: SessionSockets
    resume: ResumeBook
    revoked_reason: Callable[[str], str | None]  # the local revocation set: no I/O
    send_buffer_limit: int


class AuthFailed(Exception):
    def __init__(self, reason: str, message: str, *, retry_after_ms: int = 0,
                 action: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after_ms = retry_after_ms
        self.action = action


class Connection:
    __slots__ = (
        "services", "ws", "target", "ip", "connection_id", "user_id", "session_id", "role",
        "restaurant_id", "scope", "expires_at", "authenticated", "closed", "closing", "admitted",
        "claimed", "feed", "delivered", "pending", "catchup", "last_seen", "budget",
        "reauth_capable", "confirmed", "saved", "pings", "pongs", "awaiting",
        "delivered_at_close", "ended", "_warn_handle", "_expire_handle", "_abort_handle",
        "__weakref__",
    )

    def __init__(self, services: SocketServices, ws, target: Target, ip: str) -> None:
        self.services = services
        self.ws = ws
        self.target = target
        self.ip = ip
        self.connection_id = uuid.uuid4().hex
        self.user_id = ""
        self.session_id = ""
        self.role = ""
        self.restaurant_id = target.restaurant_id
        self.scope = protocol.RESTAURANT_SCOPE
        self.expires_at = 0
        self.authenticated = False
        self.closed = False
        self.closing = False
        self.admitted = False
        self.claimed = False
        self.feed: RestaurantFeed | None = None
        self.delivered = 0  # the last sequence written to this socket
        self.pending = None
        self.catchup: asyncio.Task | None = None
        self.last_seen = time.monotonic()
        self.budget = MessageBudget()
        self.reauth_capable = False
        # Delivery confirmation (resume.py): `confirmed` is the last sequence the client is known
        # to have received; `awaiting` holds (ping number, sequence written before it) for pings
        # not yet answered; `saved` is what the resume book holds.
        self.confirmed = 0
        self.saved = -1
        self.pings = 0
        self.pongs = 0
        self.awaiting: deque[tuple[int, int]] = deque(maxlen=UNANSWERED_PINGS_KEPT)
        self.delivered_at_close: int | None = None
        self.ended = asyncio.Event()  # set when the handler has finished and saved its position
        self._warn_handle: asyncio.TimerHandle | None = None
        self._expire_handle: asyncio.TimerHandle | None = None
        self._abort_handle: asyncio.TimerHandle | None = None

    @property
    def connection_type(self) -> str:
        return self.target.connection_type

    @property
    def user_scoped(self) -> bool:
        return self.scope == protocol.USER_SCOPE

    # --- writing ---------------------------------------------------------------------------

    def push(self, message: bytes) -> bool:
        """Queue one JSON message (a text frame) without waiting; False if the socket cannot
        take it."""
        return self.push_event(protocol.wire_text_frame(message))

    def push_event(self, frame: bytes) -> bool:
        """Write one complete WebSocket frame (framed once for every socket) without waiting."""
        ws = self.ws
        if self.closing or ws.protocol.state is not State.OPEN:
            return False
        transport = ws.transport
        if transport.get_write_buffer_size() > self.services.send_buffer_limit:
            self.services.metrics.slow_consumers += 1
            log.info("closing a slow consumer", extra={"connection_id": self.connection_id,
                                                       "restaurant_id": self.restaurant_id})
            self.drop(CloseCode.SLOW_CONSUMER, "SLOW_CONSUMER")
            return False
        try:
            # Straight to the transport: no compression is negotiated and nothing else of the
            # protocol is in flight between our writes, so the bytes are the protocol's own.
            transport.write(frame)
        except Exception:  # the transport is going away; the handler sees the close
            return False
        return True

    def send(self, kind: str, data: dict[str, Any]) -> bool:
        return self.push(protocol.encode(kind, data, self.restaurant_id))

    def send_error(self, code: str, message: str) -> None:
        self.push(protocol.error_frame(code, message, self.restaurant_id))

    def send_resync(self) -> None:
        self.send(protocol.RESYNC_REQUIRED, {
            "reason": "the events since your last_event_id are no longer available; reload "
                      "the orders (GET /api/v1/orders/active) and keep listening"})

    def replace(self) -> None:
        """A newer socket of this session took over: a normal closure, so that apps which retry
        every other close code leave it alone."""
        if self.closing or self.closed:
            return
        self.push(protocol.replaced_frame(self.restaurant_id))
        self.drop(CloseCode.NORMAL, "REPLACED")

    def drop(self, code: int, reason: str) -> None:
        """Start the closing handshake now; abort the TCP connection if it does not finish."""
        if self.closing or self.closed:
            return
        self.closing = True
        self.delivered_at_close = self.delivered  # nothing is written after the close frame
        self.services.metrics.count_close(code)
        self._cancel_token_timers()
        ws = self.ws
        if ws.protocol.state is State.OPEN:
            try:
                ws.protocol.send_close(code, reason[:120])
                ws.send_data()
            except Exception:
                pass
        self._abort_handle = asyncio.get_running_loop().call_later(
            CLOSE_TIMEOUT_SECONDS, self._abort)

    def _abort(self) -> None:
        self._abort_handle = None
        if self.ws.protocol.state is not State.CLOSED:
            self.ws.transport.abort()

    # --- lifecycle -------------------------------------------------------------------------

    # --- delivery confirmation (resume.py) -------------------------------------------------

    def note_ping(self) -> None:
        """The gateway wrote a ping: its pong will confirm everything written before it."""
        self.pings += 1
        self.awaiting.append((self.pings, self.delivered))

    def _on_pong(self) -> None:
        # Pongs answer pings in order; a pong with no ping outstanding confirms nothing.
        if self.pongs >= self.pings:
            return
        self.pongs += 1
        while self.awaiting and self.awaiting[0][0] <= self.pongs:
            number, sequence = self.awaiting.popleft()
            if number == self.pongs:
                self.confirmed = max(self.confirmed, sequence)

    @property
    def unconfirmed(self) -> bool:
        """Events were written that no answered ping covers, and no ping is out for them."""
        return self.delivered > self.confirmed and not self.awaiting

    def resume_point(self) -> resume.ResumePoint:
        return resume.ResumePoint(self.restaurant_id, self.confirmed, time.time())

    def _confirm_close(self) -> None:
        """A close we started and the client answered: it received everything written before."""
        state = self.ws.protocol
        if (self.delivered_at_close is not None and state.close_sent is not None
                and state.close_rcvd is not None and not state.close_rcvd_then_sent):
            self.confirmed = max(self.confirmed, self.delivered_at_close)

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        services = self.services
        try:
            if await self._authenticate():
                await self._serve()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("connection handler failed", extra={"connection_id": self.connection_id})
            self.drop(1011, "INTERNAL_ERROR")
        finally:
            self.closed = True
            self._cancel_token_timers()
            if self._abort_handle is not None and self.ws.protocol.state is State.CLOSED:
                self._abort_handle.cancel()
            if not self.authenticated:
                services.pending.remove(self.ip)
            if self.feed is not None:
                if self.authenticated:
                    self.feed.leave(self)
                else:
                    self.feed.unreserve()
                self.feed = None
            services.index.remove(self)
            try:
                if self.authenticated and not self.user_scoped:
                    self._confirm_close()
                    if self.confirmed != self.saved:
                        await services.resume.save([(self.session_id, self.connection_type,
                                                     self.resume_point())])
                if self.claimed:
                    await services.sessions.release(self)
                if self.admitted:
                    self.admitted = False
                    await services.registry.release(self.user_id, self.restaurant_id,
                                                    self.connection_type)
            finally:
                self.ended.set()

    async def _authenticate(self) -> bool:
        services = self.services
        header_token = bearer_token(self.ws.request.headers.get("Authorization", ""))
        try:
            if header_token:
                raw_resume = self.ws.request.headers.get("Last-Event-ID")
                try:
                    after, resume_invalid = protocol.parse_event_id(raw_resume), False
                except ProtocolError:
                    after, resume_invalid = None, True
                request = protocol.AuthRequest(header_token, "", "", after, resume_invalid)
                return await self._admit(request)
            try:
                async with asyncio.timeout(services.settings.ws_auth_timeout_seconds):
                    request = await self._wait_for_authenticate()
            except TimeoutError:
                await services.ip_window.hit(self.ip, self._policy().attempts_per_ip_per_minute)
                raise AuthFailed(
                    "AUTH_TIMEOUT",
                    f"no authenticate message within {services.settings.ws_auth_timeout_seconds:g}s "
                    "of opening the socket") from None
            if request is None:
                return False
            return await self._admit(request)
        except AuthFailed as failure:
            self._fail(failure)
            return False

    async def _wait_for_authenticate(self) -> protocol.AuthRequest | None:
        """Messages until an `authenticate` (pings are answered meanwhile); None if closed."""
        async for raw in self.ws:
            message = self._accept(raw)
            if message is None:
                if self.closing:
                    return None
                continue
            if message.type in (protocol.AUTHENTICATE, protocol.REAUTH):
                return protocol.auth_request(message)
            if message.type == protocol.PING:
                self.push(protocol.pong_frame(message.field("timestamp"), self.restaurant_id))
            elif message.type != protocol.PONG:
                self.send_error("NOT_AUTHENTICATED", "send an authenticate message first")
        return None

    def _policy(self) -> LimitPolicy:
        return LimitPolicy.for_client(self.services.settings, self.ip)

    async def _admit(self, request: protocol.AuthRequest) -> bool:
        services = self.services
        target = self.target
        policy = self._policy()

        # Signature and expiry first (no I/O): an expired token is counted in its own window.
        error: Unauthenticated | None = None
        claims = None
        try:
            claims = services.authenticator.verify_signature(request.token)
            if claims.exp <= time.time():
                error = token_expired()
        except Unauthenticated as exc:
            error = exc
        expired = error is not None and error.reason == "TOKEN_EXPIRED"
        limit = (policy.expired_attempts_per_ip_per_minute if expired
                 else policy.attempts_per_ip_per_minute)
        verdict = await services.ip_window.hit(self.ip, limit, expired_token=expired)
        if not verdict.allowed:
            security_events.record("WS_CONNECTION_RATE_LIMITED", ip=self.ip,
                                   restaurant_id=target.restaurant_id, expired_token=expired)
            raise AuthFailed("RATE_LIMITED", "too many connection attempts from this address; "
                             "wait before reconnecting", retry_after_ms=verdict.retry_after_ms)
        if error is not None:
            raise AuthFailed(error.reason, error.message)
        assert claims is not None
        self._refuse_if_revoked(claims.sid, claims.sub)

        # The user and restaurant come from the token; what the message says must agree with it.
        # A missing or zero user_id is taken from the token (the fix the app's own report
        # prescribes); only a different one is refused.
        if claims.device_only:
            self._check_device(claims)
        elif request.user_id and request.user_id != claims.sub:
            security_events.record("WS_USER_MISMATCH", ip=self.ip, user_id=claims.sub,
                                   restaurant_id=claims.restaurant_id)
            raise AuthFailed("USER_ID_MISMATCH",
                             "the user_id in the message is not the token's user")
        if (target.onboarding or not claims.restaurant_id) and not claims.device_only:
            # Onboarding, or a user with no restaurant yet: the user's own events only, whatever
            # restaurant the path names (so an app that is still onboarding is never refused).
            self.scope, self.restaurant_id = protocol.USER_SCOPE, ""
        else:
            self._check_restaurant(request, claims)

        self.user_id, self.session_id, self.role = (protocol.socket_identity(claims), claims.sid,
                                                    claims.role)
        self.expires_at = claims.exp
        self.reauth_capable = protocol.REAUTH_CAPABILITY in request.capabilities
        # At most WS_MAX_SOCKETS_PER_SESSION per session and type: the older ones end first.
        self.claimed = True
        await services.sessions.claim(self)
        if self.closing:
            return False  # replaced by an even newer socket meanwhile
        admission = await services.registry.admit(
            self.user_id, self.restaurant_id, target.connection_type,
            per_user=policy.connections_per_user, per_restaurant=policy.connections_per_restaurant)
        if not admission.admitted:
            what = "user" if admission.reason == "user" else "restaurant"
            raise AuthFailed("TOO_MANY_CONNECTIONS",
                             f"this {what} already has {admission.count} live connections",
                             retry_after_ms=TOO_MANY_CONNECTIONS_RETRY_MS)
        self.admitted = True
        # Index first, then check again: a revocation published in between is not missed.
        services.index.add(self)
        self._refuse_if_revoked(claims.sid, claims.sub)
        if self.user_scoped:
            return self._welcome(request, resync=False, after=None)

        stored = None
        if request.last_event_id is None and not request.last_event_id_invalid:
            stored = await services.resume.load(self.session_id, target.connection_type)
        self.feed = await services.hub.prepare(self.restaurant_id)
        if self.closing:
            return False
        # An explicit last_event_id wins; else where this session's previous socket got to.
        if stored is None:
            after, resync = request.last_event_id, request.last_event_id_invalid
        else:
            decision = resume.decide(
                stored, restaurant_id=self.restaurant_id, head=self.feed.position,
                now=time.time(), window_seconds=services.settings.ws_resume_window_seconds,
                max_events=services.settings.ws_resume_max_events)
            after, resync = decision.after, decision.resync
            services.metrics.resumed += decision.resumed
        return self._welcome(request, resync=resync, after=after)

    def _check_device(self, claims) -> None:
        """A device's own token: only the connection types of its device type."""
        allowed = protocol.DEVICE_CONNECTION_TYPES.get(claims.device_type, frozenset())
        if self.target.onboarding or self.target.connection_type not in allowed:
            security_events.record("WS_DEVICE_FORBIDDEN", ip=self.ip,
                                   restaurant_id=claims.restaurant_id, device_id=claims.device_id,
                                   device_type=claims.device_type,
                                   connection_type=self.target.connection_type)
            raise AuthFailed("DEVICE_FORBIDDEN",
                             f"a {claims.device_type} opens {' or '.join(sorted(allowed)) or 'no'} "
                             f"connections, not {self.target.connection_type}")

    def _check_restaurant(self, request: protocol.AuthRequest, claims) -> None:
        target = self.target
        if request.restaurant_id and request.restaurant_id != target.restaurant_id:
            raise AuthFailed("TENANT_MISMATCH",
                             f"the message names restaurant {request.restaurant_id[:64]} but the "
                             f"path names {target.restaurant_id}")
        if claims.restaurant_id != target.restaurant_id:
            security_events.record("TENANT_MISMATCH", ip=self.ip, user_id=claims.sub,
                                   restaurant_id=claims.restaurant_id, method="websocket",
                                   requested_restaurant_id=target.restaurant_id)
            raise AuthFailed("TENANT_MISMATCH",
                             f"your token is for restaurant {claims.restaurant_id}, not "
                             f"{target.restaurant_id}; switch restaurant first")
        if target.connection_type == protocol.MANAGEMENT and claims.role not in MANAGERS:
            raise AuthFailed("ROLE_FORBIDDEN",
                             f"management connections need role owner or manager; yours is "
                             f"{claims.role or 'none'}")

    def _welcome(self, request: protocol.AuthRequest, *, resync: bool, after: int | None) -> bool:
        """auth_success, then (restaurant scope) the feed attaches: no await in between, so no
        event falls between them."""
        self.authenticated = True
        self.services.pending.remove(self.ip)
        self.push(self._auth_success())
        self._schedule_token_timers()
        if self.feed is not None:
            if resync:
                self.send_resync()
            self.confirmed = after if after is not None else (self.feed.position or 0)
            self.feed.start(self, after)
        log.info("socket authenticated", extra={
            "connection_id": self.connection_id, "user_id": self.user_id,
            "restaurant_id": self.restaurant_id, "connection_type": self.connection_type,
            "scope": self.scope, "resume_after": after,
            "explicit_resume": request.last_event_id is not None})
        return True

    def _refuse_if_revoked(self, session_id: str, user_id: str) -> None:
        reason = self.services.revoked_reason(session_id)
        if reason is None:
            return
        security_events.record("REVOKED_SESSION_USE", ip=self.ip, user_id=user_id,
                               method="websocket", reason=reason)
        if Revocation(session_id, user_id, self.restaurant_id, reason).close_code == \
                CloseCode.FORBIDDEN:
            raise AuthFailed("MEMBERSHIP_REVOKED", f"your access to this restaurant changed "
                             f"({reason.lower()}); sign in again")
        raise AuthFailed("SESSION_REVOKED", "this session has been signed out; sign in again")

    def _auth_success(self) -> bytes:
        return protocol.encode(protocol.AUTH_SUCCESS, {
            "user_id": self.user_id,
            "restaurant_id": self.restaurant_id or None,
            "role": self.role,
            "connection_id": self.connection_id,
            "connection_type": self.target.connection_type,
            "scope": self.scope,
            "expires_in": max(0, int(self.expires_at - time.time())),
        }, self.restaurant_id)

    def _fail(self, failure: AuthFailed) -> None:
        self.services.metrics.auth_failures[failure.reason] += 1
        log.info("socket authentication failed", extra={
            "reason": failure.reason, "restaurant_id": self.restaurant_id, "ip": self.ip})
        self.push(protocol.auth_error_frame(failure.reason, failure.message, self.restaurant_id,
                                            retry_after_ms=failure.retry_after_ms,
                                            action=failure.action))
        self.drop(protocol.auth_failure(failure.reason)[1], failure.reason)

    # --- the live loop ---------------------------------------------------------------------

    def _accept(self, raw: str | bytes) -> protocol.ClientMessage | None:
        """Flood and validity checks for one inbound message; None when it is not handled."""
        self.last_seen = time.monotonic()
        budget = self.budget
        if not budget.take():
            if budget.exhausted:
                self.drop(CloseCode.POLICY_VIOLATION, "MESSAGE_FLOOD")
            elif budget.dropped % 25 == 1:
                self.send_error("RATE_LIMITED", "too many messages; slow down or be disconnected")
            return None
        try:
            return protocol.parse_client_message(raw)
        except ProtocolError as exc:
            budget.invalid += 1
            self.services.metrics.invalid_messages += 1
            if budget.exhausted:
                self.drop(CloseCode.POLICY_VIOLATION, "TOO_MANY_INVALID_MESSAGES")
            else:
                self.send_error(exc.code, exc.message)
            return None

    async def _serve(self) -> None:
        async for raw in self.ws:
            message = self._accept(raw)
            if message is None:
                if self.closing:
                    return
                continue
            kind = message.type
            if kind == protocol.PING:
                self.push(protocol.pong_frame(message.field("timestamp"), self.restaurant_id))
            elif kind in (protocol.REAUTH, protocol.AUTHENTICATE):
                await self._reauth(message)
            elif kind == protocol.PONG:
                self._on_pong()

    async def _reauth(self, message: protocol.ClientMessage) -> None:
        """A fresh token for the same user and restaurant keeps the socket open."""
        token = message.field("token")
        try:
            claims = await self.services.authenticator.authenticate(
                token if isinstance(token, str) else "")
            if claims.exp <= time.time():
                raise token_expired()
        except Unauthenticated as exc:
            self._reauth_failed(exc.reason, exc.message)
            return
        sent_user = protocol.auth_request_user(message)
        if (protocol.socket_identity(claims) != self.user_id
                or (sent_user and sent_user != self.user_id)):
            self._reauth_failed("USER_ID_MISMATCH", "reauth must use a token of the same user")
            return
        if not self.user_scoped and claims.restaurant_id != self.restaurant_id:
            self._reauth_failed("TENANT_MISMATCH",
                                f"reauth must use a token for restaurant {self.restaurant_id}")
            return
        if (not self.user_scoped and self.target.connection_type == protocol.MANAGEMENT
                and claims.role not in MANAGERS):
            self._fail(AuthFailed("ROLE_FORBIDDEN", "your role no longer allows a management "
                                  "connection"))
            return
        if self.closing:
            return
        # The socket keeps the session it was opened for in session_sockets (its slot there).
        self.services.index.rekey(self, claims.sid)
        self.role, self.expires_at = claims.role, claims.exp
        self.reauth_capable = True
        self.push(self._auth_success())
        self._schedule_token_timers()

    def _reauth_failed(self, reason: str, message: str) -> None:
        """The socket stays open on the old token, which still closes it at its expiry."""
        self.services.metrics.auth_failures[reason] += 1
        self.push(protocol.auth_error_frame(
            reason, f"reauth refused: {message}; the connection stays open until the current "
            "token expires", self.restaurant_id))

    # --- token expiry ----------------------------------------------------------------------

    def _cancel_token_timers(self) -> None:
        for handle in (self._warn_handle, self._expire_handle):
            if handle is not None:
                handle.cancel()
        self._warn_handle = self._expire_handle = None

    def _schedule_token_timers(self) -> None:
        self._cancel_token_timers()
        loop = asyncio.get_running_loop()
        left = self.expires_at - time.time()
        settings = self.services.settings
        # Only clients that refresh in place are warned (by default): the existing app reconnects
        # on the warning instead, opening extra sockets; at expiry it recovers cleanly.
        if settings.ws_token_warning_to == "all" or self.reauth_capable:
            warn_in = left - settings.ws_token_warning_seconds
            if warn_in <= 0:
                self._warn()
            else:
                self._warn_handle = loop.call_later(warn_in, self._warn)
        self._expire_handle = loop.call_later(max(0.0, left), self._expire)

    def _warn(self) -> None:
        self._warn_handle = None
        seconds = max(0, int(round(self.expires_at - time.time())))
        self.send(protocol.TOKEN_EXPIRED, {
            "seconds_until_expiry": seconds,
            "expires_at": self.expires_at,
            "message": "refresh the access token and send it in a reauth message",
        })

    def _expire(self) -> None:
        self._expire_handle = None
        self._fail(AuthFailed("TOKEN_EXPIRED",
                              "the access token expired and no reauth arrived; refresh it and "
                              "reconnect"))


def bearer_token(header: str) -> str:
    scheme, _, token = (header or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class ConnectionIndex:
    """Authenticated sockets of this process by session and by user, for revocations."""

    def __init__(self) -> None:
        self.by_session: defaultdict[str, set[Connection]] = defaultdict(set)
        self.by_user: defaultdict[str, set[Connection]] = defaultdict(set)
        self.all: set[Connection] = set()

    def add(self, conn: Connection) -> None:
        self.all.add(conn)
        self.by_session[conn.session_id].add(conn)
        self.by_user[conn.user_id].add(conn)

    def _discard(self, index: defaultdict[str, set[Connection]], key: str, conn: Connection) -> None:
        bucket = index.get(key)
        if bucket is not None:
            bucket.discard(conn)
            if not bucket:
                del index[key]

    def remove(self, conn: Connection) -> None:
        if conn not in self.all:
            return
        self.all.discard(conn)
        self._discard(self.by_session, conn.session_id, conn)
        self._discard(self.by_user, conn.user_id, conn)

    def rekey(self, conn: Connection, session_id: str) -> None:
        if conn.session_id == session_id:
            return
        self._discard(self.by_session, conn.session_id, conn)
        conn.session_id = session_id
        if conn in self.all:
            self.by_session[session_id].add(conn)

    def matching(self, sid: str, user_id: str, restaurant_id: str) -> list[Connection]:
        """Sockets a revocation applies to: its session, or (without one) the user's sockets,
        in its restaurant when one is named."""
        if sid:
            return list(self.by_session.get(sid, ()))
        return [conn for conn in self.by_user.get(user_id, ())
                if not restaurant_id or conn.restaurant_id == restaurant_id]
