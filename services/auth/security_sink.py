"""The auth service's security-event sink: rows straight into `auth.security_events`.

Other services reach the same table through AuthAdminService.RecordSecurityEvent
(posmesh.common.security_events.GrpcSecurityEventSink).
"""

from __future__ import annotations

from posmesh.common.security_events import SecurityEvent
from services.auth.store import AuthStore


class DatabaseSecurityEventSink:
    def __init__(self, store: AuthStore, source: str = "auth") -> None:
        self._store = store
        self._source = source

    async def write(self, event: SecurityEvent) -> None:
        await self._store.insert_security_event(
            type=event.type, severity=event.severity, source=self._source, ip=event.ip,
            user_id=event.user_id, restaurant_id=event.restaurant_id, details=event.details)
