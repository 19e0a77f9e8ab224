"""The WebSocket side of the realtime process: upgrade checks, one Connection per socket, the
ticker (heartbeats, delivery-confirmation pings, saving resume positions), revocations, user
events for user-scoped sockets, the process's own health page and its metrics (served on the
process's metrics port, posmesh/common/metrics.py).

Only Envoy reaches this listener. It serves the upgrade paths (docs/realtime.md) and, for the
process's operators, `GET /healthz` (JSON); Envoy does not route it to the outside. The query string of an upgrade is never read or logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from http import HTTPStatus
from typing import Callable
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from posmesh.common import security_events
from posmesh.common.metrics import counter_family, gauge_family
from posmesh.common.authn import Authenticator
from posmesh.common.revocations import SessionRevocation
from posmesh.common.settings import Settings
from posmesh.common.user_events import UserEvent

from services.realtime import protocol
from services.realtime.connection import Connection, ConnectionIndex, SocketServices
from services.realtime.hub import OrderHub
from services.realtime.limits import IpAttemptWindow, LimitPolicy, PendingHandshakes
from services.realtime.metrics import GatewayMetrics
from services.realtime.presence import ConnectionRegistry
from services.realtime.protocol import CloseCode
from services.realtime.resume import ResumeBook
from services.realtime.revocations import Revocation
from services.realtime.session_sockets import SessionSockets

log = logging.getLogger(__name__)

# How soon a delivered event is followed by a confirmation ping (resume.py).
TICK_SECONDS = 0.25
# How often moved positions are written to Redis (a close writes its own at once).
SAVE_POSITIONS_SECONDS = 2.0
MISSED_HEARTBEATS = 3
KERNEL_SEND_BUFFER_BYTES = 64 * 1024
# A safety net under the revocation follower's hand-over: every socket's session is also looked up
# in the local revocation set this often (no I/O).
REVOCATION_SWEEP_SECONDS = 15.0


def client_ip(headers: Headers, remote_address) -> str:
    """Envoy's view of the client (use_remote_address): never the leftmost X-Forwarded-For."""
    if ip := (headers.get("x-envoy-external-address") or "").strip():
        return ip
    if xff := headers.get("x-forwarded-for"):
        return xff.split(",")[-1].strip()
    if remote_address:
        return str(remote_address[0])
    return ""


def _bound_kernel_send_buffer(ws: ServerConnection) -> None:
    """A fixed kernel send buffer per socket instead of autotuning up to net.ipv4.tcp_wmem's
    maximum (4 MiB): bounded kernel memory per idle screen, and a client that stops reading
    shows up as a slow consumer (WS_SEND_BUFFER_BYTES) after a bounded amount of data."""
    sock = ws.transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_SEND_BUFFER_BYTES)
        except OSError:
            pass


def _text_response(ws: ServerConnection, status: HTTPStatus, body: str,
                   content_type: str = "text/plain; charset=utf-8") -> Response:
    response = ws.respond(status, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "no-store"
    return response


class RealtimeGateway:
    def __init__(self, settings: Settings, *, authenticator: Authenticator, redis,
                 hub: OrderHub, registry: ConnectionRegistry, send_buffer_limit: int,
                 ip_window: IpAttemptWindow | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.hub = hub
        self.registry = registry
        self.pending = PendingHandshakes()
        self.index = ConnectionIndex()
        self.metrics = GatewayMetrics()
        self.resume = ResumeBook(redis)
        self.sessions = SessionSockets(
            redis, registry.process_id, cap=settings.ws_max_sockets_per_session,
            live_processes=registry.live_processes, on_replaced=self._count_replaced)
        self.sockets = SocketServices(
            settings=settings, authenticator=authenticator, hub=hub, registry=registry,
            ip_window=ip_window or IpAttemptWindow(redis), pending=self.pending,
            index=self.index, metrics=self.metrics, sessions=self.sessions, resume=self.resume,
            revoked_reason=self.revoked_reason, send_buffer_limit=send_buffer_limit)
        # The apps' origins, and the edge's own: pages it serves itself (the reference kitchen
        # screen at /kitchen/) open sockets from it.
        own = urlsplit(settings.public_url)
        self.allowed_origins = frozenset(settings.cors_allowed_origins) | {
            f"{own.scheme}://{own.netloc}"}
        self.draining = False
        # The revocation follower's status (posmesh.common.revocation_follower), for /healthz.
        self.revocation_status: Callable[[], dict] = lambda: {"state": "UNKNOWN"}
        self.following_user_events = lambda: False
        self._ticker: asyncio.Task | None = None

    def _count_replaced(self) -> None:
        self.metrics.replaced += 1

    @property
    def revocations(self):
        """The process's local revocation set (the authenticator's)."""
        return self.sockets.authenticator.revocations

    def channel_handlers(self) -> dict:
        """Pub/sub channel → handler, for the process's posmesh.common.pubsub.ChannelListener
        (which carries the revocation channel too)."""
        return {self.sessions.channel: self.sessions.on_control}

    def on_revoked_session(self, revocation: SessionRevocation) -> None:
        """The revocation follower's hand-over of each revocation it learns of."""
        self.on_revocation(Revocation.of(revocation))

    # --- upgrades --------------------------------------------------------------------------

    def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            healthy = not self.draining
            return _text_response(ws, HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE,
                                  json.dumps(self.health()), "application/json")
        target = protocol.parse_path(path)
        if target is None:
            return _text_response(ws, HTTPStatus.NOT_FOUND, json.dumps({
                "code": "NOT_FOUND", "message": "WebSocket paths are /ws/{pos|kitchen|management}/"
                "{restaurant_id}"}), "application/json")
        if self.draining:
            return _text_response(ws, HTTPStatus.SERVICE_UNAVAILABLE, json.dumps({
                "code": "SHUTTING_DOWN", "message": "this process is shutting down; reconnect"}),
                "application/json")
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.allowed_origins:
            # Native apps send no Origin; a browser page on another site always does.
            self.metrics.refused_origins += 1
            security_events.record("WS_ORIGIN_REFUSED", ip=client_ip(request.headers,
                                                                    ws.remote_address),
                                   restaurant_id=target.restaurant_id, origin=origin[:200])
            return _text_response(ws, HTTPStatus.FORBIDDEN, json.dumps({
                "code": "ORIGIN_NOT_ALLOWED",
                "message": "this origin may not open WebSockets here"}), "application/json")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        target = protocol.parse_path(ws.request.path)
        if target is None:  # process_request refused it already; a defensive check
            await ws.close(CloseCode.POLICY_VIOLATION, "BAD_PATH")
            return
        ip = client_ip(ws.request.headers, ws.remote_address)
        policy = LimitPolicy.for_client(self.settings, ip)
        if not self.pending.try_add(ip, policy.pending_handshakes_per_ip):
            self.metrics.auth_failures["TOO_MANY_PENDING_HANDSHAKES"] += 1
            await ws.send(protocol.auth_error_frame(
                "RATE_LIMITED", "too many sockets from this address are still authenticating",
                target.restaurant_id, retry_after_ms=2000).decode())
            await ws.close(CloseCode.RATE_LIMITED, "RATE_LIMITED")
            return
        self.metrics.connections_opened += 1
        _bound_kernel_send_buffer(ws)
        await Connection(self.sockets, ws, target, ip).run()

    # --- revocations -----------------------------------------------------------------------

    def on_revocation(self, revocation: Revocation) -> None:
        targets = self.index.matching(revocation.sid, revocation.user_id, revocation.restaurant_id)
        for conn in targets:
            self.metrics.revocation_closes += 1
            reason = revocation.close_reason
            conn.push(protocol.auth_error_frame(
                "SESSION_REVOKED" if revocation.close_code == CloseCode.UNAUTHENTICATED
                else "MEMBERSHIP_REVOKED",
                f"access was revoked ({reason.lower()})", conn.restaurant_id))
            conn.drop(revocation.close_code, reason)
        if targets:
            log.info("closed %d socket(s) on revocation", len(targets),
                     extra={"reason": revocation.reason})

    # --- user events (user-scoped sockets) -------------------------------------------------

    def on_user_event(self, event_id: str, event: UserEvent) -> None:
        targets = [conn for conn in self.index.by_user.get(event.user_id, ())
                   if conn.user_scoped and conn.authenticated]
        if not targets:
            return
        frame = protocol.wire_text_frame(protocol.user_event_frame(event_id, event.type,
                                                                   event.data))
        for conn in targets:
            if conn.push_event(frame):
                self.metrics.user_events += 1

    def revoked_reason(self, session_id: str) -> str | None:
        """Why the session was revoked, or None while it is not known to be (the local set)."""
        return self.revocations.reason(session_id)

    def sweep_revoked(self) -> None:
        """Closes every socket whose session the local revocation set knows to be revoked."""
        for sid in list(self.index.by_session):
            reason = self.revocations.reason(sid)
            if reason is not None:
                self.on_revocation(Revocation(sid, "", "", reason))

    # --- the ticker: heartbeats, delivery confirmation, resume positions --------------------

    async def _tick(self) -> None:
        interval = self.settings.ws_ping_interval_seconds
        next_ping = time.monotonic() + interval
        next_sweep = time.monotonic() + REVOCATION_SWEEP_SECONDS
        saving: asyncio.Task | None = None
        next_save = time.monotonic() + SAVE_POSITIONS_SECONDS
        while True:
            await asyncio.sleep(min(TICK_SECONDS, interval))
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + REVOCATION_SWEEP_SECONDS
                self.sweep_revoked()
            heartbeat = now >= next_ping
            if heartbeat:
                next_ping = now + interval
            self._ping(heartbeat=heartbeat, dead_before=now - MISSED_HEARTBEATS * interval)
            if now >= next_save and (saving is None or saving.done()):
                next_save = now + SAVE_POSITIONS_SECONDS
                saving = asyncio.create_task(self._save_positions(), name="resume-positions")

    def _ping(self, *, heartbeat: bool, dead_before: float) -> None:
        """Every socket at the heartbeat; in between, a socket that was sent events no answered
        ping covers, so its confirmed position (resume.py) trails by a tick and a round trip."""
        frame = protocol.wire_text_frame(protocol.ping_frame())  # one frame for every socket
        for conn in tuple(self.index.all):
            if not conn.authenticated or conn.closing:
                continue  # between admission and auth_success: no ping before the welcome
            if heartbeat and conn.last_seen < dead_before:
                conn.drop(CloseCode.HEARTBEAT_TIMEOUT, "HEARTBEAT_TIMEOUT")
            elif heartbeat or conn.unconfirmed:
                if conn.push_event(frame):
                    conn.note_ping()

    async def _save_positions(self) -> None:
        moved = [conn for conn in tuple(self.index.all)
                 if conn.authenticated and not conn.user_scoped and conn.confirmed != conn.saved]
        if not moved:
            return
        points = [(conn.session_id, conn.connection_type, conn.resume_point()) for conn in moved]
        await self.resume.save(points)
        for conn, (_, _, point) in zip(moved, points):
            conn.saved = point.sequence

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick(), name="ws-heartbeats")

    async def stop(self) -> None:
        self.draining = True
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        await self.sessions.stop()

    # --- health and metrics ----------------------------------------------------------------

    def health(self) -> dict:
        return {
            "status": "DRAINING" if self.draining else "SERVING",
            "process_id": self.registry.process_id,
            "connections": self.registry.local_totals(),
            "authenticating": self.pending.total,
            "presence": self.registry.local_presence(),
            "feeds": len(self.hub.feeds),
            "catching_up": self.hub.catching_up(),
            "redis": "SERVING" if self.registry.redis_ok else "NOT_SERVING",
            "revocations": self.revocation_status(),
            "user_events": "FOLLOWING" if self.following_user_events() else "NOT_FOLLOWING",
        }

    def metric_families(self):
        """This process's WebSocket side for its metrics page (posmesh/common/metrics.py), read
        at scrape time: the hot paths only add to plain integers. No restaurant label: presence
        per restaurant is /healthz's and GetPresence's."""
        stats = self.hub.stats
        counts = self.metrics
        yield gauge_family("posmesh_realtime_connections", "Authenticated sockets of this "
                           "process by connection type.",
                           {(kind,): count for kind, count in self.registry.local_totals().items()},
                           ("connection_type",))
        yield gauge_family("posmesh_realtime_authenticating", "Sockets still in the auth "
                           "handshake.", self.pending.total)
        yield gauge_family("posmesh_realtime_feeds", "Upstream order streams (restaurants with "
                           "screens here).", len(self.hub.feeds))
        yield gauge_family("posmesh_realtime_catching_up", "Sockets replaying missed events.",
                           self.hub.catching_up())
        counters = {
            "posmesh_realtime_connections_opened": (counts.connections_opened, "Upgrades accepted."),
            "posmesh_realtime_events_received": (stats.events_received, "Order events from upstream."),
            "posmesh_realtime_deliveries": (stats.deliveries, "Event frames queued to live sockets."),
            "posmesh_realtime_upstream_reconnects": (stats.upstream_reconnects,
                                                     "Upstream streams reopened."),
            "posmesh_realtime_resyncs": (stats.resyncs, "resync_required sent."),
            "posmesh_realtime_catchups": (stats.catchups_started, "Private catch-ups."),
            "posmesh_realtime_ring_replays": (stats.ring_replays, "Resumes served from memory."),
            "posmesh_realtime_slow_consumers": (counts.slow_consumers,
                                                "Sockets closed as slow consumers (4008)."),
            "posmesh_realtime_invalid_messages": (counts.invalid_messages,
                                                  "Malformed client messages."),
            "posmesh_realtime_revocation_closes": (counts.revocation_closes,
                                                   "Sockets closed by a revocation."),
            "posmesh_realtime_refused_origins": (counts.refused_origins,
                                                 "Upgrades refused for their Origin."),
            "posmesh_realtime_replaced": (counts.replaced, "Sockets replaced by a newer one of "
                                          "their session."),
            "posmesh_realtime_resumed": (counts.resumed, "Sockets started where their session's "
                                         "previous socket got to."),
            "posmesh_realtime_user_events": (counts.user_events, "User events written to "
                                             "user-scoped sockets."),
        }
        for name, (value, documentation) in counters.items():
            yield counter_family(name, documentation, value)
        yield counter_family("posmesh_realtime_auth_failures", "Failed socket authentications "
                             "by reason.", {(reason,): count for reason, count
                                            in counts.auth_failures.items()}, ("reason",))
        yield counter_family("posmesh_realtime_closes", "Sockets closed by this server, by "
                             "close code.", {(str(code),): count for code, count
                                             in counts.closes.items()}, ("code",))
