"""The SQL of paired devices (schema `auth`): devices, pairing codes, PINs and setup codes,
device policies, and the device and staff sessions (rows of `sessions`, see store.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from services.auth.store import AuthStore, NewSession, RevokedSession


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    id: str
    restaurant_id: str
    device_type: str
    name: str
    created_at: datetime
    last_used_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PairingCodeRow:
    restaurant_id: str
    device_type: str
    name: str
    expires_at: datetime
    used_at: datetime | None


@dataclass(frozen=True, slots=True)
class PinHolder:
    """A member of a restaurant as the PIN pad sees them."""
    user_id: str
    full_name: str
    email: str
    role: str
    restaurant_name: str
    pin_hash: str | None
    setup_code_hash: bytes | None
    setup_expires_at: datetime | None


_DEVICE_COLUMNS = "id, restaurant_id, device_type, name, created_at, last_used_at, revoked_at"


def _device(row: Row) -> DeviceRecord:
    return DeviceRecord(str(row.id), str(row.restaurant_id), row.device_type, row.name,
                        row.created_at, row.last_used_at, row.revoked_at)


class PairingOutcome:
    REDEEMED, UNKNOWN, EXPIRED, USED = "redeemed", "unknown", "expired", "used"


class DeviceStore:
    def __init__(self, engine: AsyncEngine, sessions: AuthStore) -> None:
        self.engine = engine
        self._sessions = sessions

    # --- pairing -----------------------------------------------------------------------------

    async def insert_pairing_code(self, *, digest: bytes, restaurant_id: str, device_type: str,
                                  name: str, created_by: str, now: datetime,
                                  expires_at: datetime) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(text("""
                INSERT INTO pairing_codes (code_hash, restaurant_id, device_type, name, created_by,
                                           created_at, expires_at)
                VALUES (:digest, :rid, :type, :name, :by, :now, :expires_at)
            """), {"digest": digest, "rid": restaurant_id, "type": device_type, "name": name,
                   "by": created_by, "now": now, "expires_at": expires_at})

    async def redeem_pairing_code(self, *, digest: bytes, restaurant_id: str | None,
                                  device_id: str, now: datetime,
                                  session: Callable[[DeviceRecord], NewSession]
                                  ) -> tuple[str, DeviceRecord | None]:
        """Marks the code used, creates the device and its credential session (`session(device)`
        builds it) in one transaction. Returns (outcome, device)."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(text("""
                SELECT restaurant_id, device_type, name, expires_at, used_at
                FROM pairing_codes WHERE code_hash = :digest FOR UPDATE
            """), {"digest": digest})).first()
            if row is None or (restaurant_id and str(row.restaurant_id) != restaurant_id):
                return PairingOutcome.UNKNOWN, None
            if row.used_at is not None:
                return PairingOutcome.USED, None
            if now >= row.expires_at:
                return PairingOutcome.EXPIRED, None
            device = DeviceRecord(device_id, str(row.restaurant_id), row.device_type, row.name,
                                  now, now)
            await conn.execute(text(f"""
                INSERT INTO devices ({_DEVICE_COLUMNS})
                VALUES (:id, :rid, :type, :name, :now, :now, NULL)
            """), {"id": device_id, "rid": device.restaurant_id, "type": device.device_type,
                   "name": device.name, "now": now})
            await conn.execute(text("""
                UPDATE pairing_codes SET used_at = :now, device_id = :id WHERE code_hash = :digest
            """), {"now": now, "id": device_id, "digest": digest})
            await AuthStore._insert_session(conn, session(device))
            return PairingOutcome.REDEEMED, device

    # --- devices -----------------------------------------------------------------------------

    async def live_devices(self, restaurant_id: str) -> list[DeviceRecord]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(text(f"""
                SELECT {_DEVICE_COLUMNS} FROM devices
                WHERE restaurant_id = :rid AND revoked_at IS NULL ORDER BY created_at, id
            """), {"rid": restaurant_id})).all()
        return [_device(row) for row in rows]

    async def live_device(self, restaurant_id: str, device_id: str) -> DeviceRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(text(f"""
                SELECT {_DEVICE_COLUMNS} FROM devices
                WHERE id = :id AND restaurant_id = :rid AND revoked_at IS NULL
            """), {"id": device_id, "rid": restaurant_id})).first()
        return _device(row) if row is not None else None

    async def rename_device(self, restaurant_id: str, device_id: str, name: str) -> DeviceRecord | None:
        async with self.engine.begin() as conn:
            row = (await conn.execute(text(f"""
                UPDATE devices SET name = :name
                WHERE id = :id AND restaurant_id = :rid AND revoked_at IS NULL
                RETURNING {_DEVICE_COLUMNS}
            """), {"id": device_id, "rid": restaurant_id, "name": name})).first()
        return _device(row) if row is not None else None

    async def revoke_device(self, restaurant_id: str, device_id: str, *, reason: str,
                            now: datetime) -> tuple[DeviceRecord | None, list[RevokedSession]]:
        """The device and every live session on it (its own and staff sessions) end together."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(text(f"""
                UPDATE devices SET revoked_at = :now
                WHERE id = :id AND restaurant_id = :rid AND revoked_at IS NULL
                RETURNING {_DEVICE_COLUMNS}
            """), {"id": device_id, "rid": restaurant_id, "now": now})).first()
            if row is None:
                return None, []
            revoked = await self._sessions.revoke_in(conn, "device_id = :device_id",
                                                     {"device_id": device_id}, reason, now)
        return _device(row), revoked

    async def touch_device(self, device_id: str, now: datetime) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(text("UPDATE devices SET last_used_at = :now WHERE id = :id"),
                               {"id": device_id, "now": now})

    # --- staff sessions ----------------------------------------------------------------------

    async def open_staff_session(self, new: NewSession, *, reason: str) -> list[RevokedSession]:
        """Ends the device's live staff sessions (switching user) and opens `new`, at once."""
        async with self.engine.begin() as conn:
            # The device row's lock serialises two sign-ins on one till.
            await conn.execute(text("SELECT 1 FROM devices WHERE id = :id FOR UPDATE"),
                               {"id": new.device_id})
            ended = await self._sessions.revoke_in(
                conn, "device_id = :device_id AND kind = 'staff'", {"device_id": new.device_id},
                reason, new.now)
            await AuthStore._insert_session(conn, new)
        return ended

    async def lock_idle_staff_sessions(self, *, reason: str, now: datetime) -> list[RevokedSession]:
        """Ends the staff sessions whose idle time ran out (any replica may run it: each row is
        ended once)."""
        async with self.engine.begin() as conn:
            return await self._sessions.revoke_in(
                conn, "kind = 'staff' AND expires_at <= :now", {}, reason, now)

    # --- PINs --------------------------------------------------------------------------------

    async def pin_holder(self, restaurant_id: str, user_id: str) -> PinHolder | None:
        """A member of the restaurant with their PIN state; None for anyone else."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(text("""
                SELECT u.id, u.full_name, u.email, m.role, m.restaurant_name, p.pin_hash,
                       p.setup_code_hash, p.setup_expires_at
                FROM memberships m JOIN users u ON u.id = m.user_id
                LEFT JOIN pins p ON p.user_id = m.user_id AND p.restaurant_id = m.restaurant_id
                WHERE m.restaurant_id = :rid AND m.user_id = :uid
            """), {"rid": restaurant_id, "uid": user_id})).first()
        if row is None:
            return None
        return PinHolder(str(row.id), row.full_name, row.email, row.role, row.restaurant_name,
                         row.pin_hash, row.setup_code_hash, row.setup_expires_at)

    async def pin_holders(self, restaurant_id: str) -> list[PinHolder]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(text("""
                SELECT u.id, u.full_name, u.email, m.role, m.restaurant_name, p.pin_hash
                FROM memberships m JOIN users u ON u.id = m.user_id
                LEFT JOIN pins p ON p.user_id = m.user_id AND p.restaurant_id = m.restaurant_id
                WHERE m.restaurant_id = :rid ORDER BY u.full_name, u.id
            """), {"rid": restaurant_id})).all()
        return [PinHolder(str(row.id), row.full_name, row.email, row.role, row.restaurant_name,
                          row.pin_hash, None, None) for row in rows]

    async def set_pin(self, restaurant_id: str, user_id: str, pin_hash: str, now: datetime) -> None:
        """Sets the PIN and forgets any setup code."""
        async with self.engine.begin() as conn:
            await conn.execute(text("""
                INSERT INTO pins (user_id, restaurant_id, pin_hash, updated_at)
                VALUES (:uid, :rid, :hash, :now)
                ON CONFLICT (user_id, restaurant_id) DO UPDATE
                SET pin_hash = :hash, setup_code_hash = NULL, setup_expires_at = NULL,
                    updated_at = :now
            """), {"uid": user_id, "rid": restaurant_id, "hash": pin_hash, "now": now})

    async def reset_pin(self, restaurant_id: str, user_id: str, setup_digest: bytes,
                        expires_at: datetime, now: datetime) -> None:
        """Clears the PIN and stores a new setup code (a previous one stops working)."""
        async with self.engine.begin() as conn:
            await conn.execute(text("""
                INSERT INTO pins (user_id, restaurant_id, pin_hash, setup_code_hash,
                                  setup_expires_at, updated_at)
                VALUES (:uid, :rid, NULL, :digest, :expires_at, :now)
                ON CONFLICT (user_id, restaurant_id) DO UPDATE
                SET pin_hash = NULL, setup_code_hash = :digest, setup_expires_at = :expires_at,
                    updated_at = :now
            """), {"uid": user_id, "rid": restaurant_id, "digest": setup_digest,
                   "expires_at": expires_at, "now": now})

    async def use_setup_code(self, restaurant_id: str, user_id: str, setup_digest: bytes,
                             pin_hash: str, now: datetime) -> bool:
        """Sets the PIN when the setup code is the person's live one (compare-and-set: a code
        is used once)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(text("""
                UPDATE pins SET pin_hash = :hash, setup_code_hash = NULL, setup_expires_at = NULL,
                                updated_at = :now
                WHERE user_id = :uid AND restaurant_id = :rid AND setup_code_hash = :digest
                  AND setup_expires_at > :now
            """), {"uid": user_id, "rid": restaurant_id, "digest": setup_digest,
                   "hash": pin_hash, "now": now})
            return result.rowcount == 1

    # --- policy ------------------------------------------------------------------------------

    async def idle_lock_seconds(self, restaurant_id: str) -> int | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(text("""
                SELECT staff_idle_lock_seconds FROM device_policies WHERE restaurant_id = :rid
            """), {"rid": restaurant_id})).scalar_one_or_none()

    async def set_idle_lock_seconds(self, restaurant_id: str, seconds: int, now: datetime) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(text("""
                INSERT INTO device_policies (restaurant_id, staff_idle_lock_seconds, updated_at)
                VALUES (:rid, :seconds, :now)
                ON CONFLICT (restaurant_id) DO UPDATE
                SET staff_idle_lock_seconds = :seconds, updated_at = :now
            """), {"rid": restaurant_id, "seconds": seconds, "now": now})
