"""One API for security-relevant events (failed login, lockout, refresh reuse, revoked-session use,
access denied) in every service: a line in the structured log, and a row in auth's
`security_events` table through a sink. The auth service writes rows directly; the other services
send them to the auth service's internal RecordSecurityEvent RPC.

Recording never blocks or fails the request that triggered it: rows are written by background
tasks, bounded in number, and a failure to write is logged, not raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Protocol

from posmesh.common.metrics import SECURITY_EVENTS

log = logging.getLogger("posmesh.security")

INFO, WARNING, CRITICAL = "info", "warning", "critical"
_MAX_PENDING = 1000
# Details echo client input (headers, ids); cap each value so an attacker cannot bloat the log
# or push an event past the store's size limit.
_MAX_DETAIL_CHARS = 256


@dataclass(frozen=True)
class SecurityEvent:
    type: str
    severity: str = WARNING
    ip: str = ""
    user_id: str = ""
    restaurant_id: str = ""
    details: dict = field(default_factory=dict)


class SecurityEventSink(Protocol):
    async def write(self, event: SecurityEvent) -> None: ...


class _Recorder:
    def __init__(self) -> None:
        self.sink: SecurityEventSink | None = None
        self.pending: set[asyncio.Task] = set()

    def record(self, event: SecurityEvent) -> None:
        SECURITY_EVENTS.labels(event.type, event.severity).inc()
        log.log(
            logging.ERROR if event.severity == CRITICAL else logging.WARNING,
            "security event %s", event.type,
            extra={"security_event": event.type, "severity": event.severity, "ip": event.ip,
                   "user_id": event.user_id, "restaurant_id": event.restaurant_id,
                   "details": event.details},
        )
        if self.sink is None:
            return
        if len(self.pending) >= _MAX_PENDING:
            log.error("security event sink is backed up; event kept in the log only")
            return
        task = asyncio.get_running_loop().create_task(self._write(self.sink, event))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    @staticmethod
    async def _write(sink: SecurityEventSink, event: SecurityEvent) -> None:
        try:
            await sink.write(event)
        except Exception as exc:
            log.error("could not store security event %s: %r", event.type, exc)

    async def flush(self, timeout: float = 5.0) -> None:
        if self.pending:
            await asyncio.wait(set(self.pending), timeout=timeout)


_recorder = _Recorder()


def configure(sink: SecurityEventSink | None) -> None:
    _recorder.sink = sink


def record(type: str, *, severity: str = WARNING, ip: str = "", user_id: str = "",
           restaurant_id: str = "", **details: object) -> None:
    """Records an event; returns at once."""
    capped = {key: _cap(value) for key, value in details.items()}
    _recorder.record(SecurityEvent(type, severity, _cap(ip), _cap(user_id), _cap(restaurant_id),
                                   capped))


def _cap(value: object) -> object:
    if not isinstance(value, str):
        return value
    # PostgreSQL text and jsonb cannot hold NUL: an attacker must not keep a probe out of the
    # audit table by putting one in an id.
    value = value.replace("\x00", "\\x00")
    if len(value) > _MAX_DETAIL_CHARS:
        return value[:_MAX_DETAIL_CHARS] + f"...[{len(value) - _MAX_DETAIL_CHARS} more chars]"
    return value


async def flush(timeout: float = 5.0) -> None:
    await _recorder.flush(timeout)


class GrpcSecurityEventSink:
    """Sends events to the auth service (for every service but auth)."""

    def __init__(self, channel, source: str) -> None:
        from posmesh.auth.v1 import auth_pb2, auth_pb2_grpc

        self._source = source
        self._pb = auth_pb2
        self._stub = auth_pb2_grpc.AuthAdminServiceStub(channel)

    async def write(self, event: SecurityEvent) -> None:
        await self._stub.RecordSecurityEvent(
            self._pb.RecordSecurityEventRequest(
                type=event.type, severity=event.severity, ip=event.ip, user_id=event.user_id,
                restaurant_id=event.restaurant_id,
                details_json=json.dumps(event.details, default=str), source=self._source,
            ),
            timeout=5,
        )
