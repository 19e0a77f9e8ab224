"""Use cases of paired devices: pairing, the device list, PINs, staff sign-in on a till (with
switching user and the idle lock) and a manager's approval of one action. Rules and errors are
in device_rules.py and pins.py; the SQL in device_store.py. docs/auth.md#devices-and-pins.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from posmesh.common import security_events
from posmesh.common.authn import IDLE_LOCKED
from posmesh.common.context import Caller
from posmesh.common.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from posmesh.common.permissions import MANAGER, MANAGERS, OVERRIDABLE_ACTIONS, PIN_PADS
from posmesh.common.settings import Settings
from services.auth import refresh_tokens
from services.auth.access_tokens import AccessTokenIssuer
from services.auth.device_rules import (
    APPROVAL_TTL_SECONDS,
    DEFAULT_NAMES,
    DEVICE,
    DEVICE_ABSOLUTE_TTL,
    DEVICE_REFRESH_TTL,
    DEVICE_REVOKED,
    IDLE_LOCK_DEFAULT,
    PAIRING_CODE_TTL,
    PAIRING_CODES_PER_HOUR,
    SETUP_CODE_TTL,
    STAFF,
    STAFF_ABSOLUTE_TTL,
    STAFF_SWITCHED,
    device_not_found,
    new_pairing_code,
    new_setup_code,
    normalise_pairing_code,
    normalise_setup_code,
    pairing_code_expired,
    pairing_code_invalid,
    pairing_code_used,
    pin_invalid,
    pin_not_set,
    setup_code_invalid,
    too_many_pin_attempts,
    valid_device_name,
    valid_device_type,
    valid_idle_lock,
    valid_pin_attempt,
)
from services.auth.device_store import DeviceRecord, DeviceStore, PairingOutcome, PinHolder
from services.auth.pins import KeyedHashing, check_new_pin
from services.auth.rate_limits import LoginLimiter, Subject
from services.auth.request_limits import Limit, RequestLimits
from services.auth.rules import ContextUser, invalid, utcnow, valid_uuid
from services.auth.sessions import CachedSession, RevocationPublisher, SessionCache
from services.auth.store import NewSession

_PAIRING_LIMIT = Limit("pairing:restaurant", PAIRING_CODES_PER_HOUR, 3600)


@dataclass(frozen=True, slots=True)
class IssuedCode:
    code: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class DeviceCredential:
    device: DeviceRecord
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int


@dataclass(frozen=True, slots=True)
class StaffSignIn:
    session_id: str
    access_token: str
    refresh_token: str
    expires_in: int
    user: ContextUser
    device_id: str
    idle_lock_seconds: int


@dataclass(frozen=True, slots=True)
class IssuedApproval:
    token: str
    action: str
    resource_id: str
    approver: str
    expires_at: int


class Devices:
    def __init__(self, *, settings: Settings, store: DeviceStore, hashing: KeyedHashing,
                 limiter: LoginLimiter, request_limits: RequestLimits, issuer: AccessTokenIssuer,
                 cache: SessionCache, revocations: RevocationPublisher) -> None:
        self._settings = settings
        self._store = store
        self._hashing = hashing
        self._limiter = limiter
        self._request_limits = request_limits
        self._issuer = issuer
        self._cache = cache
        self._revocations = revocations

    # --- pairing -----------------------------------------------------------------------------

    async def create_pairing_code(self, caller: Caller, *, device_type: str,
                                  name: str) -> tuple[IssuedCode, str, str]:
        device_type = valid_device_type(device_type)
        name = valid_device_name(name, default=DEFAULT_NAMES[device_type])
        await self._request_limits.check((_PAIRING_LIMIT, caller.restaurant_id))
        code = new_pairing_code()
        now = utcnow()
        expires_at = now + PAIRING_CODE_TTL
        await self._store.insert_pairing_code(
            digest=self._hashing.code_digest("pair", code.normalised),
            restaurant_id=caller.restaurant_id, device_type=device_type, name=name,
            created_by=caller.user_id, now=now, expires_at=expires_at)
        security_events.record("PAIRING_CODE_CREATED", severity=security_events.INFO,
                               ip=caller.client_ip, user_id=caller.user_id,
                               restaurant_id=caller.restaurant_id, device_type=device_type)
        return IssuedCode(code.code, expires_at), device_type, name

    async def pair(self, *, code: str, restaurant_id: str, client_ip: str,
                   user_agent: str) -> DeviceCredential:
        if not code.strip():
            raise invalid("code", "code is required")
        wanted = valid_uuid(restaurant_id, "restaurant_id") if restaurant_id.strip() else None
        normalised = normalise_pairing_code(code)
        now = utcnow()
        session_id, secret = str(uuid.uuid4()), refresh_tokens.new_secret()
        new_session = None

        def credential_session(device: DeviceRecord) -> NewSession:
            nonlocal new_session
            new_session = NewSession(
                session_id=session_id, user_id=None, restaurant_id=device.restaurant_id, now=now,
                expires_at=now + DEVICE_REFRESH_TTL, absolute_expires_at=now + DEVICE_ABSOLUTE_TTL,
                client_ip=client_ip, refresh_token_id=str(uuid.uuid4()),
                refresh_digest=secret.digest, device_label=device.name,
                user_agent=user_agent[:300], kind=DEVICE, device_id=device.id)
            return new_session

        outcome, device = await self._store.redeem_pairing_code(
            digest=self._hashing.code_digest("pair", normalised), restaurant_id=wanted,
            device_id=str(uuid.uuid4()), now=now, session=credential_session)
        if outcome != PairingOutcome.REDEEMED:
            security_events.record("PAIRING_REFUSED", ip=client_ip, restaurant_id=wanted or "",
                                   outcome=outcome)
            raise {PairingOutcome.USED: pairing_code_used,
                   PairingOutcome.EXPIRED: pairing_code_expired}.get(outcome, pairing_code_invalid)()
        assert device is not None and new_session is not None
        access = self._issuer.issue(user_id="", session_id=session_id,
                                    restaurant_id=device.restaurant_id, role="",
                                    now=now.timestamp(), device_id=device.id,
                                    device_type=device.device_type)
        security_events.record("DEVICE_PAIRED", severity=security_events.INFO, ip=client_ip,
                               restaurant_id=device.restaurant_id, device_id=device.id,
                               device_type=device.device_type)
        return DeviceCredential(device, access.token, secret.token, self._issuer.ttl_seconds,
                                int(DEVICE_REFRESH_TTL.total_seconds()))

    # --- the device list ---------------------------------------------------------------------

    async def list(self, caller: Caller) -> list[DeviceRecord]:
        return await self._store.live_devices(caller.restaurant_id)

    async def rename(self, caller: Caller, *, device_id: str, name: str) -> DeviceRecord:
        device_id = valid_uuid(device_id, "device_id")
        device = await self._store.rename_device(caller.restaurant_id, device_id,
                                                 valid_device_name(name))
        if device is None:
            raise device_not_found(device_id)
        return device

    async def revoke(self, caller: Caller, *, device_id: str) -> DeviceRecord:
        """The device's credential and staff sessions end; the revocation channel closes their
        sockets in every realtime process."""
        device_id = valid_uuid(device_id, "device_id")
        device, ended = await self._store.revoke_device(caller.restaurant_id, device_id,
                                                        reason=DEVICE_REVOKED, now=utcnow())
        if device is None:
            raise device_not_found(device_id)
        await self._revocations.publish(ended, DEVICE_REVOKED)
        security_events.record(DEVICE_REVOKED, severity=security_events.INFO, ip=caller.client_ip,
                               user_id=caller.user_id, restaurant_id=caller.restaurant_id,
                               device_id=device_id, sessions_ended=len(ended))
        return device

    # --- policy ------------------------------------------------------------------------------

    async def idle_lock_seconds(self, restaurant_id: str) -> int:
        return await self._store.idle_lock_seconds(restaurant_id) or IDLE_LOCK_DEFAULT

    async def set_idle_lock_seconds(self, caller: Caller, seconds: int) -> int:
        seconds = valid_idle_lock(seconds, development=self._settings.is_development)
        await self._store.set_idle_lock_seconds(caller.restaurant_id, seconds, utcnow())
        return seconds

    # --- PINs --------------------------------------------------------------------------------

    async def set_own_pin(self, caller: Caller, pin: str) -> None:
        pin = check_new_pin(pin)
        if await self._store.pin_holder(caller.restaurant_id, caller.user_id) is None:
            raise PermissionDenied("NOT_A_MEMBER", "you are not a member of this restaurant")
        await self._store.set_pin(caller.restaurant_id, caller.user_id,
                                  self._hashing.hash_pin(pin), utcnow())
        security_events.record("PIN_SET", severity=security_events.INFO, ip=caller.client_ip,
                               user_id=caller.user_id, restaurant_id=caller.restaurant_id)

    async def reset_pin(self, caller: Caller, user_id: str) -> IssuedCode:
        user_id = valid_uuid(user_id, "user_id")
        target = await self._store.pin_holder(caller.restaurant_id, user_id)
        if target is None:
            raise NotFound("USER_NOT_FOUND", f"no member {user_id} in this restaurant",
                           user_id=user_id)
        if caller.role == MANAGER and target.role != "staff" and target.user_id != caller.user_id:
            raise PermissionDenied("ROLE_FORBIDDEN", "managers reset the PINs of staff-role "
                                   "members only", role=caller.role)
        code = new_setup_code()
        now = utcnow()
        expires_at = now + SETUP_CODE_TTL
        await self._store.reset_pin(caller.restaurant_id, user_id,
                                    self._hashing.code_digest("setup", code.normalised),
                                    expires_at, now)
        security_events.record("PIN_RESET", severity=security_events.INFO, ip=caller.client_ip,
                               user_id=caller.user_id, restaurant_id=caller.restaurant_id,
                               target_user_id=user_id)
        return IssuedCode(code.code, expires_at)

    async def pin_users(self, caller: Caller) -> list[PinHolder]:
        return await self._store.pin_holders(caller.restaurant_id)

    # --- staff sign-in on a till -------------------------------------------------------------

    async def pin_login(self, device: Caller, *, user_id: str, pin: str) -> StaffSignIn:
        user_id = valid_uuid(user_id, "user_id")
        pin = valid_pin_attempt(pin)
        holder = await self._checked_pin(device, user_id, pin, purpose="PIN_LOGIN")
        return await self._open_staff_session(device, holder)

    async def setup_pin(self, device: Caller, *, user_id: str, setup_code: str,
                        new_pin: str) -> StaffSignIn:
        user_id = valid_uuid(user_id, "user_id")
        code = normalise_setup_code(setup_code) if setup_code.strip() else ""
        if not code:
            raise invalid("setup_code", "setup_code is required")
        new_pin = check_new_pin(new_pin, "new_pin")
        attempt = await self._begin(device, user_id)
        holder = await self._store.pin_holder(device.restaurant_id, user_id)
        digest = self._hashing.code_digest("setup", code)
        used = holder is not None and await self._store.use_setup_code(
            device.restaurant_id, user_id, digest, self._hashing.hash_pin(new_pin), utcnow())
        if not used:
            await self._failed(attempt, device, user_id, "PIN_SETUP")
            raise setup_code_invalid()
        await self._limiter.succeeded(attempt)
        security_events.record("PIN_SET", severity=security_events.INFO, ip=device.client_ip,
                               user_id=user_id, restaurant_id=device.restaurant_id,
                               device_id=device.device_id, with_setup_code=True)
        return await self._open_staff_session(device, holder)

    async def _checked_pin(self, device: Caller, user_id: str, pin: str, *,
                           purpose: str) -> PinHolder:
        """The restaurant's member whose PIN this is, within the per-device and per-person
        limits; PIN_INVALID for a wrong PIN and for anyone not of the device's restaurant."""
        attempt = await self._begin(device, user_id)
        try:
            holder = await self._store.pin_holder(device.restaurant_id, user_id)
        except BaseException:
            await self._limiter.abandoned(attempt)
            raise
        if holder is not None and holder.pin_hash is None:
            await self._limiter.abandoned(attempt)
            raise pin_not_set()
        if holder is None or not self._hashing.verify_pin(holder.pin_hash, pin):
            await self._failed(attempt, device, user_id, purpose)
            raise pin_invalid()
        await self._limiter.succeeded(attempt)
        return holder

    async def _begin(self, device: Caller, user_id: str):
        subjects = [Subject("pin-user", f"{device.restaurant_id}:{user_id}",
                            self._settings.pin_max_failures),
                    Subject("pin-device", device.device_id, self._settings.pin_device_max_failures)]
        try:
            return await self._limiter.begin(subjects)
        except ResourceExhausted as error:  # locked out: say so in PIN terms
            raise too_many_pin_attempts(int(error.metadata.get("retry_after_seconds", 1))) from None

    async def _failed(self, attempt, device: Caller, user_id: str, purpose: str) -> None:
        details = {"device_id": device.device_id, "purpose": purpose}
        security_events.record("PIN_FAILED", ip=device.client_ip, user_id=user_id,
                               restaurant_id=device.restaurant_id, **details)
        lockout = await self._limiter.failed(attempt)
        if lockout is not None:
            security_events.record("PIN_LOCKOUT", ip=device.client_ip, user_id=user_id,
                                   restaurant_id=device.restaurant_id,
                                   locked=lockout.subject_kind, seconds=lockout.seconds, **details)
            raise too_many_pin_attempts(lockout.seconds)

    async def _open_staff_session(self, device: Caller, holder: PinHolder) -> StaffSignIn:
        idle = await self.idle_lock_seconds(device.restaurant_id)
        now = utcnow()
        secret = refresh_tokens.new_secret()
        session_id = str(uuid.uuid4())
        record = await self._store.live_device(device.restaurant_id, device.device_id)
        if record is None:  # revoked a moment ago
            raise device_not_found(device.device_id)
        ended = await self._store.open_staff_session(NewSession(
            session_id=session_id, user_id=holder.user_id, restaurant_id=device.restaurant_id,
            now=now, expires_at=now + timedelta(seconds=idle), absolute_expires_at=now + STAFF_ABSOLUTE_TTL,
            client_ip=device.client_ip, refresh_token_id=str(uuid.uuid4()),
            refresh_digest=secret.digest, device_label=record.name, kind=STAFF,
            device_id=device.device_id, idle_lock_seconds=idle), reason=STAFF_SWITCHED)
        await self._revocations.publish(ended, STAFF_SWITCHED)
        user = ContextUser(id=holder.user_id, email=holder.email, full_name=holder.full_name,
                           role=holder.role, restaurant_id=device.restaurant_id,
                           restaurant_name=holder.restaurant_name)
        access = self._issuer.issue(user_id=holder.user_id, session_id=session_id,
                                    restaurant_id=device.restaurant_id, role=holder.role,
                                    now=now.timestamp(), device_id=device.device_id,
                                    device_type=device.device_type, ttl_seconds=idle)
        await self._cache.put(session_id, CachedSession(
            user_id=user.id, email=user.email, full_name=user.full_name,
            restaurant_id=user.restaurant_id, restaurant_name=user.restaurant_name, role=user.role))
        security_events.record("PIN_LOGIN", severity=security_events.INFO, ip=device.client_ip,
                               user_id=holder.user_id, restaurant_id=device.restaurant_id,
                               device_id=device.device_id, session_id=session_id,
                               ended_sessions=len(ended))
        return StaffSignIn(session_id, access.token, secret.token,
                           access.expires_at - int(now.timestamp()), user, device.device_id, idle)

    async def lock_idle_staff_sessions(self) -> int:
        """Ends the staff sessions idle past their lock at once (their access tokens would
        otherwise live on through the verifiers' expiry leeway) and tells every service."""
        locked = await self._store.lock_idle_staff_sessions(reason=IDLE_LOCKED, now=utcnow())
        await self._revocations.publish(locked, IDLE_LOCKED)
        return len(locked)

    # --- manager override --------------------------------------------------------------------

    async def approve(self, caller: Caller, *, action: str, resource_id: str,
                      approver_user_id: str, approver_pin: str) -> IssuedApproval:
        """A manager's PIN on this till approves `action` on `resource_id` for the signed-in
        person's session only, once, for APPROVAL_TTL_SECONDS."""
        if not action:
            raise invalid("action", "action is required")
        if action not in OVERRIDABLE_ACTIONS:
            raise InvalidArgument("UNKNOWN_ACTION", f"{action[:64]!r} cannot be approved with a "
                                  f"PIN; one of {', '.join(OVERRIDABLE_ACTIONS)}", field="action")
        resource_id = valid_uuid(resource_id, "resource_id")
        approver_user_id = valid_uuid(approver_user_id, "approver_user_id")
        approver_pin = valid_pin_attempt(approver_pin, "approver_pin")
        if not caller.device_id or caller.device_type not in PIN_PADS:
            raise PermissionDenied("DEVICE_REQUIRED", "a manager approves an action on a till: "
                                   "sign in there with your PIN")
        approver = await self._checked_pin(caller, approver_user_id, approver_pin,
                                           purpose="APPROVAL")
        if approver.role not in MANAGERS:
            security_events.record("APPROVAL_REFUSED", ip=caller.client_ip,
                                   user_id=caller.user_id, restaurant_id=caller.restaurant_id,
                                   approver=approver_user_id, action=action,
                                   device_id=caller.device_id)
            raise PermissionDenied("APPROVER_NOT_MANAGER", "only an owner or manager can approve "
                                   "this", approver_role=approver.role)
        issued = self._issuer.issue_approval(
            action=action, resource_id=resource_id, approver=approver.user_id,
            restaurant_id=caller.restaurant_id, device_id=caller.device_id,
            session_id=caller.session_id, ttl_seconds=APPROVAL_TTL_SECONDS)
        security_events.record("MANAGER_APPROVAL_GIVEN", severity=security_events.INFO,
                               ip=caller.client_ip, user_id=caller.user_id,
                               restaurant_id=caller.restaurant_id, approver=approver.user_id,
                               action=action, resource_id=resource_id, device_id=caller.device_id,
                               approval_id=issued.jti)
        return IssuedApproval(issued.token, action, resource_id, approver.user_id,
                              issued.expires_at)

