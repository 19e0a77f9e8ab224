"""Security events other services record through auth (RecordSecurityEvent): validated and
stored in auth's security_events table."""

from __future__ import annotations

import json

from posmesh.common import security_events
from services.auth.rules import (
    CONTROL_CHARACTERS,
    MAX_EVENT_DETAILS_BYTES,
    SEVERITIES,
    invalid,
    valid_code,
)
from services.auth.store import AuthStore


class SecurityLog:
    def __init__(self, store: AuthStore) -> None:
        self._store = store

    async def record_security_event(self, *, type: str, severity: str, ip: str, user_id: str,
                                    restaurant_id: str, details_json: str, source: str) -> None:
        event_type = valid_code(type, "type", default="")
        severity = severity.strip().lower() or security_events.WARNING
        if severity not in SEVERITIES:
            raise invalid("severity", f"severity must be one of {', '.join(SEVERITIES)}")
        if len(details_json.encode()) > MAX_EVENT_DETAILS_BYTES:
            raise invalid("details_json", f"details_json must be at most {MAX_EVENT_DETAILS_BYTES} bytes")
        try:
            details = json.loads(details_json) if details_json.strip() else {}
        except ValueError:
            raise invalid("details_json", "details_json is not valid JSON") from None
        if not isinstance(details, dict):
            raise invalid("details_json", "details_json must be a JSON object")
        for field, value in (("ip", ip), ("user_id", user_id), ("restaurant_id", restaurant_id),
                             ("source", source)):
            if len(value) > 128 or CONTROL_CHARACTERS.search(value):
                raise invalid(field, f"{field} must be at most 128 printable characters")
        await self._store.insert_security_event(type=event_type, severity=severity,
                                                source=source.strip(), ip=ip.strip(),
                                                user_id=user_id.strip(),
                                                restaurant_id=restaurant_id.strip(),
                                                details=details)
