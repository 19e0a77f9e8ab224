"""The auth service's rules: accounts, sign-in, sessions, token rotation, memberships.

No grpc here: callers get dataclasses, failures are posmesh.common.errors.ApiError subclasses.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from posmesh.common import security_events
from posmesh.common.authn import Authenticator
from posmesh.common.context import Caller
from posmesh.common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from posmesh.common.permissions import ROLES
from posmesh.common.settings import Settings
from posmesh.common.tokens import Claims, session_revoked
from posmesh.common.user_events import (
    MEMBERSHIP_GRANTED,
    MEMBERSHIP_REVOKED as MEMBERSHIP_REVOKED_EVENT,
    UserEvent,
    UserEventPublisher,
)
from services.auth import refresh_tokens
from services.auth.access_tokens import AccessTokenIssuer
from services.auth.keys import KeyRing
from services.auth.passwords import PasswordHashing
from services.auth.rate_limits import LoginLimiter, account_id, too_many_attempts
from services.auth.sessions import CachedSession, RevocationPublisher, SessionCache
from services.auth.store import (
    AuthStore,
    EmailTaken,
    LockedRefreshToken,
    MembershipRecord,
    NewSession,
    RefreshUnit,
    RevokedSession,
    SessionView,
    UserNotFound,
    UserRecord,
)

log = logging.getLogger(__name__)

MAX_EMAIL_LENGTH = 254
MAX_PASSWORD_LENGTH = 1024
MAX_NAME_LENGTH = 200
MAX_BATCH_USERS = 1000
MAX_EVENT_DETAILS_BYTES = 16384
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SEVERITIES = (security_events.INFO, security_events.WARNING, security_events.CRITICAL)

# Why a session ended (stored with it, sent on the revocation channel).
LOGOUT, LOGOUT_ALL = "LOGOUT", "LOGOUT_ALL"
REFRESH_REUSED = "REFRESH_REUSED"
RESTAURANT_SWITCHED = "RESTAURANT_SWITCHED"
ROLE_CHANGED, MEMBERSHIP_REVOKED = "ROLE_CHANGED", "MEMBERSHIP_REVOKED"
ADMIN_REVOKED = "ADMIN_REVOKED"


# --- results ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ContextUser:
    id: str
    email: str
    full_name: str
    role: str
    restaurant_id: str
    restaurant_name: str


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    user: ContextUser

    @property
    def restaurant_id(self) -> str:
        return self.user.restaurant_id

    @property
    def role(self) -> str:
        return self.user.role


@dataclass(frozen=True, slots=True)
class Introspection:
    valid: bool
    reason: str = ""
    claims: Claims | None = None
    user: ContextUser | None = None


@dataclass(frozen=True, slots=True)
class Me:
    user: UserRecord
    memberships: list[MembershipRecord]
    restaurant_id: str
    role: str
    session_id: str


# --- input rules -----------------------------------------------------------------------------

def _invalid(field: str, message: str) -> InvalidArgument:
    return InvalidArgument("INVALID_ARGUMENT", message, field=field)


def normalise_email(raw: str) -> str:
    return raw.strip().lower()


def valid_email(raw: str) -> str:
    email = normalise_email(raw)
    if not email:
        raise _invalid("email", "email is required")
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.match(email):
        raise _invalid("email", "email is not a valid address")
    return email


def check_password_policy(password: str, *, email: str, min_length: int) -> None:
    if len(password) < min_length:
        raise InvalidArgument("WEAK_PASSWORD",
                              f"the password must be at least {min_length} characters long",
                              min_length=min_length)
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidArgument("WEAK_PASSWORD",
                              f"the password must be at most {MAX_PASSWORD_LENGTH} characters long",
                              max_length=MAX_PASSWORD_LENGTH)
    if password.strip().lower() == email or len(set(password)) < 3:
        raise InvalidArgument("WEAK_PASSWORD",
                              "the password is too easy to guess (it repeats one or two characters "
                              "or is the email address)")


def valid_name(raw: str, field: str, *, required: bool) -> str:
    name = " ".join(raw.split())
    if not name and required:
        raise _invalid(field, f"{field} is required")
    if len(name) > MAX_NAME_LENGTH:
        raise _invalid(field, f"{field} must be at most {MAX_NAME_LENGTH} characters long")
    if _CONTROL.search(name):
        raise _invalid(field, f"{field} must not contain control characters")
    return name


def valid_uuid(raw: str, field: str) -> str:
    try:
        return str(uuid.UUID(raw.strip()))
    except (ValueError, AttributeError):
        raise _invalid(field, f"{field} must be a UUID") from None


def valid_role(raw: str) -> str:
    role = raw.strip().lower()
    if role not in ROLES:
        raise _invalid("role", f"role must be one of {', '.join(ROLES)}")
    return role


def valid_code(raw: str, field: str, *, default: str) -> str:
    code = raw.strip() or default
    if not _CODE.match(code):
        raise _invalid(field, f"{field} must be an UPPER_SNAKE code of at most 64 characters")
    return code


# --- errors ----------------------------------------------------------------------------------

def invalid_credentials() -> Unauthenticated:
    # One error for unknown email and wrong password: the answer must not reveal accounts.
    return Unauthenticated("INVALID_CREDENTIALS", "the email or password is incorrect")


def refresh_invalid() -> Unauthenticated:
    return Unauthenticated("TOKEN_INVALID", "the refresh token is not valid; sign in again",
                           action="LOGIN")


def refresh_expired() -> Unauthenticated:
    return Unauthenticated("REFRESH_EXPIRED", "the session has expired; sign in again",
                           action="LOGIN")


def refresh_reused() -> Unauthenticated:
    return Unauthenticated(
        "REFRESH_REUSED",
        "this refresh token was already used, so the session has been ended to protect the "
        "account; sign in again", action="LOGIN")


def not_a_member(restaurant_id: str) -> PermissionDenied:
    return PermissionDenied("NOT_A_MEMBER", f"you are not a member of restaurant {restaurant_id}",
                            restaurant_id=restaurant_id)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(0, int((moment - now).total_seconds()))


class AuthDomain:
    def __init__(self, *, settings: Settings, store: AuthStore, passwords: PasswordHashing,
                 limiter: LoginLimiter, issuer: AccessTokenIssuer, keyring: KeyRing,
                 authenticator: Authenticator, cache: SessionCache,
                 revocations: RevocationPublisher, user_events: UserEventPublisher) -> None:
        self._settings = settings
        self._store = store
        self._passwords = passwords
        self._limiter = limiter
        self._issuer = issuer
        self._keyring = keyring
        self._authenticator = authenticator
        self._cache = cache
        self._revocations = revocations
        self._user_events = user_events
        self._refresh_ttl = timedelta(days=settings.refresh_token_ttl_days)
        self._absolute_ttl = timedelta(days=max(settings.refresh_token_absolute_days,
                                                settings.refresh_token_ttl_days))
        self._grace = timedelta(seconds=max(0.0, settings.refresh_grace_seconds))

    # --- accounts ----------------------------------------------------------------------------

    async def register(self, *, email: str, password: str, full_name: str) -> UserRecord:
        email = valid_email(email)
        full_name = valid_name(full_name, "full_name", required=True)
        check_password_policy(password, email=email, min_length=self._settings.password_min_length)
        password_hash = await self._passwords.hash(password)
        try:
            return await self._store.create_user(email=email, full_name=full_name,
                                                 password_hash=password_hash, now=_utcnow())
        except EmailTaken:
            raise AlreadyExists("EMAIL_TAKEN", "an account with this email already exists; sign in "
                                "instead", field="email") from None

    # --- sign-in -----------------------------------------------------------------------------

    async def login(self, *, email: str, password: str, restaurant_id: str,
                    client_ip: str) -> TokenPair:
        email = normalise_email(email)
        if not email:
            raise _invalid("email", "email is required")
        if not password:
            raise _invalid("password", "password is required")
        if len(password) > MAX_PASSWORD_LENGTH or len(email) > MAX_EMAIL_LENGTH:
            raise invalid_credentials()  # no account can have these; not worth a hash
        requested = valid_uuid(restaurant_id, "restaurant_id") if restaurant_id.strip() else ""

        attempt = await self._limiter.begin(self._limiter.subjects(email, client_ip))
        try:
            found = await self._store.user_for_login(email)
            user, memberships = found if found is not None else (None, [])
            result = await self._passwords.verify(user.password_hash if user else None, password)
        except BaseException:
            await self._limiter.abandoned(attempt)
            raise
        if not result.ok:
            details = {"account": account_id(email), "known_account": user is not None}
            security_events.record("LOGIN_FAILED", ip=client_ip, user_id=user.id if user else "",
                                   **details)
            lockout = await self._limiter.failed(attempt)
            if lockout is not None:
                security_events.record("LOGIN_LOCKOUT", ip=client_ip,
                                       user_id=user.id if user else "", locked=lockout.subject_kind,
                                       seconds=lockout.seconds, **details)
                raise too_many_attempts(lockout.seconds)
            raise invalid_credentials()
        assert user is not None
        await self._limiter.succeeded(attempt)
        if result.new_hash is not None and user.password_hash is not None:
            await self._store.replace_password_hash(user.id, old_hash=user.password_hash,
                                                    new_hash=result.new_hash, now=_utcnow())
        membership = self._membership_for_login(memberships, requested, user, client_ip)
        return await self._open_session(user, membership, client_ip)

    def _membership_for_login(self, memberships: list[MembershipRecord], requested: str,
                              user: UserRecord, client_ip: str) -> MembershipRecord | None:
        if requested:
            for membership in memberships:
                if membership.restaurant_id == requested:
                    return membership
            security_events.record("NOT_A_MEMBER", severity=security_events.INFO, ip=client_ip,
                                   user_id=user.id, restaurant_id=requested)
            raise not_a_member(requested)
        # Exactly one restaurant: that is where the user works. Several: they choose later
        # with switch-restaurant. None: a token without restaurant context.
        return memberships[0] if len(memberships) == 1 else None

    def _new_session(self, user: UserRecord, membership: MembershipRecord | None,
                     client_ip: str, now: datetime) -> tuple[NewSession, refresh_tokens.RefreshSecret]:
        secret = refresh_tokens.new_secret()
        absolute = now + self._absolute_ttl
        return NewSession(
            session_id=str(uuid.uuid4()), user_id=user.id,
            restaurant_id=membership.restaurant_id if membership else None, now=now,
            expires_at=min(now + self._refresh_ttl, absolute), absolute_expires_at=absolute,
            client_ip=client_ip, refresh_token_id=str(uuid.uuid4()),
            refresh_digest=secret.digest), secret

    async def _open_session(self, user: UserRecord, membership: MembershipRecord | None,
                            client_ip: str) -> TokenPair:
        now = _utcnow()
        new, secret = self._new_session(user, membership, client_ip, now)
        await self._store.create_session(new)
        return await self._pair_for_new_session(user, membership, new, secret, now)

    async def _pair_for_new_session(self, user: UserRecord, membership: MembershipRecord | None,
                                    new: NewSession, secret: refresh_tokens.RefreshSecret,
                                    now: datetime) -> TokenPair:
        context_user = ContextUser(
            id=user.id, email=user.email, full_name=user.full_name,
            role=membership.role if membership else "",
            restaurant_id=membership.restaurant_id if membership else "",
            restaurant_name=membership.restaurant_name if membership else "")
        access = self._issuer.issue(user_id=user.id, session_id=new.session_id,
                                    restaurant_id=context_user.restaurant_id,
                                    role=context_user.role, now=now.timestamp())
        await self._cache.put(new.session_id, _cached(context_user))
        return TokenPair(access.token, secret.token, self._issuer.ttl_seconds,
                         _seconds_until(new.expires_at, now), context_user)

    # --- refresh -----------------------------------------------------------------------------

    async def refresh(self, *, refresh_token: str, client_ip: str) -> TokenPair:
        """Rotates the token. Inside the grace window a rotated token gets the same successor
        pair again; after it, presenting a rotated token ends the whole session."""
        presented = refresh_token.strip()
        digest = refresh_tokens.digest_of(presented)
        if digest is None:
            raise refresh_invalid()
        now = _utcnow()
        ended_because = ""
        async with self._store.refresh_unit(digest) as unit:  # holds the token's row lock
            token = unit.token
            if token is None:
                raise refresh_invalid()
            session = token.session
            if session.revoked_at is not None:
                raise refresh_reused() if session.revoke_reason == REFRESH_REUSED else session_revoked()
            if now >= session.expires_at or now >= session.absolute_expires_at:
                raise refresh_expired()
            if token.rotated_at is None and session.restaurant_id and not session.is_member:
                # The membership is gone (its revocation ended the session already; this guards
                # a session that escaped it).
                ended_because = MEMBERSHIP_REVOKED
            elif token.rotated_at is None:
                return await self._rotate(unit, presented, now)
            elif (replayed := self._replay(token, presented, now)) is not None:
                return replayed
            else:
                ended_because = REFRESH_REUSED
            revoked = await unit.revoke_session(reason=ended_because, now=now)
        # Committed: now tell every service, and answer.
        await self._revocations.publish(revoked, ended_because)
        if ended_because == MEMBERSHIP_REVOKED:
            raise session_revoked()
        security_events.record(
            REFRESH_REUSED, severity=security_events.CRITICAL, ip=client_ip,
            user_id=session.user_id, restaurant_id=session.restaurant_id,
            session_id=session.session_id, rotated_at=token.rotated_at.isoformat())
        raise refresh_reused()

    async def _rotate(self, unit: RefreshUnit, presented: str, now: datetime) -> TokenPair:
        """Issues the successor pair, keeping it sealed under the presented token for the grace
        window, and slides the session's expiry (never past its absolute maximum)."""
        token = unit.token
        assert token is not None
        session = token.session
        pair, successor_digest, successor_id = self._successor(session, now)
        sealed = refresh_tokens.seal(presented, token.id, refresh_tokens.SealedPair(
            pair.access_token, int(now.timestamp()) + pair.expires_in, pair.refresh_token))
        expires_at = min(now + self._refresh_ttl, session.absolute_expires_at)
        if not await unit.rotate(successor_id=successor_id, successor_digest=successor_digest,
                                 sealed=sealed, grace_until=now + self._grace,
                                 session_expires_at=expires_at, now=now):
            raise session_revoked()  # a logout won the race; nothing is committed
        return TokenPair(pair.access_token, pair.refresh_token, pair.expires_in,
                         _seconds_until(expires_at, now), pair.user)

    def _replay(self, token: LockedRefreshToken, presented: str, now: datetime) -> TokenPair | None:
        """The successor pair of a token rotated moments ago (a concurrent refresh from the same
        app), while the grace window lasts; None after it."""
        if token.sealed_successor is None or token.grace_until is None or now >= token.grace_until:
            return None
        opened = refresh_tokens.unseal(presented, token.id, token.sealed_successor)
        if opened is None:
            return None
        session = token.session
        return TokenPair(opened.access_token, opened.refresh_token,
                         max(0, opened.access_expires_at - int(now.timestamp())),
                         _seconds_until(session.expires_at, now), _context_user(session))

    def _successor(self, session: SessionView, now: datetime) -> tuple[TokenPair, bytes, str]:
        secret = refresh_tokens.new_secret()
        user = _context_user(session)
        access = self._issuer.issue(user_id=session.user_id, session_id=session.session_id,
                                    restaurant_id=session.restaurant_id, role=session.role,
                                    now=now.timestamp())
        return (TokenPair(access.token, secret.token, self._issuer.ttl_seconds, 0, user),
                secret.digest, str(uuid.uuid4()))

    # --- signed-in caller --------------------------------------------------------------------

    async def logout(self, caller: Caller, *, all_sessions: bool) -> int:
        now = _utcnow()
        if all_sessions:
            revoked = await self._store.revoke_user_sessions(caller.user_id, restaurant_id=None,
                                                             reason=LOGOUT_ALL, now=now)
            await self._revocations.publish(revoked, LOGOUT_ALL)
        else:
            revoked = await self._store.revoke_session(caller.session_id, reason=LOGOUT, now=now)
            await self._revocations.publish(revoked, LOGOUT)
        return len(revoked)

    async def me(self, caller: Caller) -> Me:
        session = await self._live_session(caller.session_id, caller.user_id)
        found = await self._store.user_with_memberships(caller.user_id)
        if session is None or found is None:
            raise session_revoked()
        user, memberships = found
        return Me(user, memberships, caller.restaurant_id, caller.role, caller.session_id)

    async def switch_restaurant(self, caller: Caller, *, restaurant_id: str,
                                client_ip: str) -> TokenPair:
        """A new session in the other restaurant replaces the caller's (which ends, so tokens
        for the old context stop working); the sign-in's absolute expiry carries over."""
        target = valid_uuid(restaurant_id, "restaurant_id")
        found = await self._store.user_with_memberships(caller.user_id)
        if found is None:
            raise session_revoked()
        user, memberships = found
        membership = next((m for m in memberships if m.restaurant_id == target), None)
        if membership is None:
            security_events.record("NOT_A_MEMBER", severity=security_events.INFO, ip=client_ip,
                                   user_id=user.id, restaurant_id=target)
            raise not_a_member(target)
        now = _utcnow()
        new, secret = self._new_session(user, membership, client_ip, now)
        switched = await self._store.switch_session(old_session_id=caller.session_id, new=new,
                                                    reason=RESTAURANT_SWITCHED)
        if switched is None:
            raise session_revoked()
        old, expires_at = switched
        await self._revocations.publish([old], RESTAURANT_SWITCHED)
        pair = await self._pair_for_new_session(user, membership, new, secret, now)
        return TokenPair(pair.access_token, pair.refresh_token, pair.expires_in,
                         _seconds_until(expires_at, now), pair.user)

    # --- introspection -----------------------------------------------------------------------

    async def verify(self, token: str) -> Introspection:
        token = token.strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        if not token:
            return Introspection(False, "TOKEN_INVALID")
        try:
            claims = await self._authenticator.authenticate(token)
        except Unauthenticated as error:
            return Introspection(False, error.reason)
        cached = await self._cache.get(claims.sid)
        if cached is None or cached.user_id != claims.sub:
            session = await self._live_session(claims.sid, claims.sub)
            if session is None:
                return Introspection(False, "SESSION_REVOKED")
            cached = _cached(_context_user(session))
            await self._cache.put(claims.sid, cached)
        user = ContextUser(id=claims.sub, email=cached.email, full_name=cached.full_name,
                           role=claims.role, restaurant_id=claims.restaurant_id,
                           restaurant_name=cached.restaurant_name)
        return Introspection(True, "", claims, user)

    async def _live_session(self, session_id: str, user_id: str) -> SessionView | None:
        """The session when it is live; a revoked one gets its Redis marker re-published (the
        marker was missing, or the token would not have got this far)."""
        session = await self._store.session_view(session_id)
        if session is None or session.user_id != user_id:
            return None
        if session.revoked_at is not None:
            await self._revocations.publish(
                [RevokedSession(session.session_id, session.user_id, session.restaurant_id)],
                session.revoke_reason or "REVOKED")
            return None
        return session

    def jwks_json(self) -> bytes:
        return json.dumps(self._keyring.jwks(), separators=(",", ":")).encode()

    # --- internal API (other services) -------------------------------------------------------

    async def ensure_user(self, *, email: str, full_name: str, password: str) -> tuple[UserRecord, bool]:
        email = valid_email(email)
        full_name = valid_name(full_name, "full_name", required=False) or email.split("@", 1)[0]
        if password:
            check_password_policy(password, email=email,
                                  min_length=self._settings.password_min_length)
        existing = await self._store.user_for_login(email)
        if existing is not None:
            return existing[0], False
        password_hash = await self._passwords.hash(password) if password else None
        return await self._store.ensure_user(email=email, full_name=full_name,
                                             password_hash=password_hash, now=_utcnow())

    async def batch_get_users(self, user_ids: list[str]) -> list[UserRecord]:
        if len(user_ids) > MAX_BATCH_USERS:
            raise _invalid("user_ids", f"at most {MAX_BATCH_USERS} user ids per call")
        ids = list(dict.fromkeys(valid_uuid(user_id, "user_ids") for user_id in user_ids))
        return await self._store.users_by_ids(ids)

    async def grant_membership(self, *, user_id: str, restaurant_id: str, restaurant_name: str,
                               role: str) -> tuple[MembershipRecord, str, int]:
        user_id = valid_uuid(user_id, "user_id")
        restaurant_id = valid_uuid(restaurant_id, "restaurant_id")
        restaurant_name = valid_name(restaurant_name, "restaurant_name", required=False)
        role = valid_role(role)
        try:
            change = await self._store.grant_membership(
                user_id=user_id, restaurant_id=restaurant_id, restaurant_name=restaurant_name,
                role=role, now=_utcnow(), revoke_reason=ROLE_CHANGED)
        except UserNotFound:
            raise NotFound("USER_NOT_FOUND", f"user {user_id} does not exist",
                           user_id=user_id) from None
        if change.previous_role and change.previous_role != role:
            security_events.record(ROLE_CHANGED, severity=security_events.INFO, user_id=user_id,
                                   restaurant_id=restaurant_id, previous_role=change.previous_role,
                                   role=role, sessions_ended=len(change.revoked))
            await self._revocations.publish(change.revoked, ROLE_CHANGED)
        if change.previous_role != role:
            # The user's own screens (an app still onboarding) may switch to it at once.
            await self._user_events.publish(UserEvent(user_id, MEMBERSHIP_GRANTED, {
                "restaurant_id": restaurant_id, "restaurant_name": restaurant_name, "role": role,
                "previous_role": change.previous_role}))
        return change.membership, change.previous_role, len(change.revoked)

    async def revoke_membership(self, *, user_id: str, restaurant_id: str) -> int:
        """Idempotent: revoking a membership that is gone still ends any session left there."""
        user_id = valid_uuid(user_id, "user_id")
        restaurant_id = valid_uuid(restaurant_id, "restaurant_id")
        existed, revoked = await self._store.revoke_membership(
            user_id=user_id, restaurant_id=restaurant_id, now=_utcnow(), reason=MEMBERSHIP_REVOKED)
        if existed:
            security_events.record(MEMBERSHIP_REVOKED, severity=security_events.INFO,
                                   user_id=user_id, restaurant_id=restaurant_id,
                                   sessions_ended=len(revoked))
        await self._revocations.publish(revoked, MEMBERSHIP_REVOKED)
        if existed:
            await self._user_events.publish(UserEvent(user_id, MEMBERSHIP_REVOKED_EVENT, {
                "restaurant_id": restaurant_id}))
        return len(revoked)

    async def revoke_user_sessions(self, *, user_id: str, restaurant_id: str, reason: str) -> int:
        user_id = valid_uuid(user_id, "user_id")
        restaurant = valid_uuid(restaurant_id, "restaurant_id") if restaurant_id.strip() else None
        reason = valid_code(reason, "reason", default=ADMIN_REVOKED)
        revoked = await self._store.revoke_user_sessions(user_id, restaurant_id=restaurant,
                                                         reason=reason, now=_utcnow())
        await self._revocations.publish(revoked, reason)
        return len(revoked)

    async def record_security_event(self, *, type: str, severity: str, ip: str, user_id: str,
                                    restaurant_id: str, details_json: str, source: str) -> None:
        event_type = valid_code(type, "type", default="")
        severity = severity.strip().lower() or security_events.WARNING
        if severity not in SEVERITIES:
            raise _invalid("severity", f"severity must be one of {', '.join(SEVERITIES)}")
        if len(details_json.encode()) > MAX_EVENT_DETAILS_BYTES:
            raise _invalid("details_json", f"details_json must be at most {MAX_EVENT_DETAILS_BYTES} bytes")
        try:
            details = json.loads(details_json) if details_json.strip() else {}
        except ValueError:
            raise _invalid("details_json", "details_json is not valid JSON") from None
        if not isinstance(details, dict):
            raise _invalid("details_json", "details_json must be a JSON object")
        for field, value in (("ip", ip), ("user_id", user_id), ("restaurant_id", restaurant_id),
                             ("source", source)):
            if len(value) > 128 or _CONTROL.search(value):
                raise _invalid(field, f"{field} must be at most 128 printable characters")
        await self._store.insert_security_event(type=event_type, severity=severity,
                                                source=source.strip(), ip=ip.strip(),
                                                user_id=user_id.strip(),
                                                restaurant_id=restaurant_id.strip(),
                                                details=details)


def _context_user(session: SessionView) -> ContextUser:
    return ContextUser(id=session.user_id, email=session.email, full_name=session.full_name,
                       role=session.role, restaurant_id=session.restaurant_id,
                       restaurant_name=session.restaurant_name)


def _cached(user: ContextUser) -> CachedSession:
    return CachedSession(user_id=user.id, email=user.email, full_name=user.full_name,
                         restaurant_id=user.restaurant_id, restaurant_name=user.restaurant_name,
                         role=user.role)
