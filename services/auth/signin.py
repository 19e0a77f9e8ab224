"""Sign-in and everything a signed-in device does with its session: login, refresh rotation
(with reuse detection and a grace window), logout, switching restaurant, introspection, the
caller's own session list. Rules and errors are in rules.py; the SQL in store.py.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

from posmesh.common import security_events
from posmesh.common.authn import IDLE_LOCKED, Authenticator, session_locked
from posmesh.common.context import Caller
from posmesh.common.errors import ApiError, NotFound, PermissionDenied, Unauthenticated
from posmesh.common.settings import Settings
from posmesh.common.tokens import session_revoked
from services.auth import metrics, refresh_tokens
from services.auth.access_tokens import AccessTokenIssuer
from services.auth.device_rules import (
    DEVICE,
    DEVICE_REFRESH_TTL,
    DEVICE_REVOKED,
    STAFF,
)
from services.auth.keys import KeyRing
from services.auth.passwords import PasswordHashing
from services.auth.rate_limits import LoginLimiter, account_id, too_many_attempts
from services.auth.rules import (
    LOGOUT,
    LOGOUT_ALL,
    MAX_EMAIL_LENGTH,
    MAX_PASSWORD_LENGTH,
    MEMBERSHIP_REVOKED,
    REFRESH_REUSED,
    OTHER_SESSIONS_ENDED,
    RESTAURANT_SWITCHED,
    SESSION_ENDED,
    ContextUser,
    Introspection,
    Me,
    TokenPair,
    invalid,
    invalid_credentials,
    normalise_email,
    not_a_member,
    refresh_expired,
    refresh_invalid,
    refresh_reused,
    seconds_until,
    utcnow,
    valid_uuid,
)
from services.auth.sessions import CachedSession, RevocationPublisher, SessionCache
from services.auth.store import (
    AuthStore,
    LockedRefreshToken,
    MembershipRecord,
    NewSession,
    RefreshUnit,
    RevokedSession,
    SessionRecord,
    SessionView,
    UserRecord,
)

MAX_DEVICE_LABEL_LENGTH = 100
MAX_USER_AGENT_LENGTH = 300


class SignIn:
    def __init__(self, *, settings: Settings, store: AuthStore, passwords: PasswordHashing,
                 limiter: LoginLimiter, issuer: AccessTokenIssuer, keyring: KeyRing,
                 authenticator: Authenticator, cache: SessionCache,
                 revocations: RevocationPublisher) -> None:
        self._settings = settings
        self._store = store
        self._passwords = passwords
        self._limiter = limiter
        self._issuer = issuer
        self._keyring = keyring
        self._authenticator = authenticator
        self._cache = cache
        self._revocations = revocations
        self._refresh_ttl = timedelta(days=settings.refresh_token_ttl_days)
        self._absolute_ttl = timedelta(days=max(settings.refresh_token_absolute_days,
                                                settings.refresh_token_ttl_days))
        self._grace = timedelta(seconds=max(0.0, settings.refresh_grace_seconds))

    # --- sign-in -----------------------------------------------------------------------------

    async def login(self, *, email: str, password: str, restaurant_id: str, client_ip: str,
                    device_label: str = "", user_agent: str = "") -> TokenPair:
        # A sign-in goes before new passwords from start to end (see enrollment_hashing.py).
        with self._passwords.holding_off_new_passwords():
            try:
                pair = await self._login(email=email, password=password,
                                         restaurant_id=restaurant_id, client_ip=client_ip,
                                         device_label=device_label, user_agent=user_agent)
            except ApiError as error:
                metrics.LOGINS.labels(error.reason).inc()
                raise
            metrics.LOGINS.labels("OK").inc()
            return pair

    async def _login(self, *, email: str, password: str, restaurant_id: str, client_ip: str,
                     device_label: str, user_agent: str) -> TokenPair:
        email = normalise_email(email)
        if not email:
            raise invalid("email", "email is required")
        if not password:
            raise invalid("password", "password is required")
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
                metrics.LOCKOUTS.labels(lockout.subject_kind).inc()
                security_events.record("LOGIN_LOCKOUT", ip=client_ip,
                                       user_id=user.id if user else "", locked=lockout.subject_kind,
                                       seconds=lockout.seconds, **details)
                raise too_many_attempts(lockout.seconds)
            raise invalid_credentials()
        assert user is not None
        await self._limiter.succeeded(attempt)
        if result.new_hash is not None and user.password_hash is not None:
            await self._store.replace_password_hash(user.id, old_hash=user.password_hash,
                                                    new_hash=result.new_hash, now=utcnow())
        membership = self._membership_for_login(memberships, requested, user, client_ip)
        device = _device(device_label, user_agent)
        return await self._open_session(user, membership, client_ip, device)

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
                     client_ip: str, now: datetime, device: tuple[str, str] = ("", "")
                     ) -> tuple[NewSession, refresh_tokens.RefreshSecret]:
        secret = refresh_tokens.new_secret()
        absolute = now + self._absolute_ttl
        return NewSession(
            session_id=str(uuid.uuid4()), user_id=user.id,
            restaurant_id=membership.restaurant_id if membership else None, now=now,
            expires_at=min(now + self._refresh_ttl, absolute), absolute_expires_at=absolute,
            client_ip=client_ip, refresh_token_id=str(uuid.uuid4()),
            refresh_digest=secret.digest, device_label=device[0], user_agent=device[1]), secret

    async def _open_session(self, user: UserRecord, membership: MembershipRecord | None,
                            client_ip: str, device: tuple[str, str]) -> TokenPair:
        now = utcnow()
        new, secret = self._new_session(user, membership, client_ip, now, device)
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
                         seconds_until(new.expires_at, now), context_user)

    # --- refresh -----------------------------------------------------------------------------

    async def refresh(self, *, refresh_token: str, client_ip: str) -> TokenPair:
        """Rotates the token. Inside the grace window a rotated token gets the same successor
        pair again; after it, presenting a rotated token ends the whole session."""
        presented = refresh_token.strip()
        digest = refresh_tokens.digest_of(presented)
        if digest is None:
            raise refresh_invalid()
        now = utcnow()
        ended_because = ""
        async with self._store.refresh_unit(digest) as unit:  # holds the token's row lock
            token = unit.token
            if token is None:
                raise refresh_invalid()
            session = token.session
            if session.revoked_at is not None:
                if session.revoke_reason == IDLE_LOCKED:
                    raise session_locked()
                raise refresh_reused() if session.revoke_reason == REFRESH_REUSED else session_revoked()
            if now >= session.absolute_expires_at:
                raise refresh_expired()
            if now >= session.expires_at:
                raise session_locked() if session.kind == STAFF else refresh_expired()
            if token.rotated_at is None and session.device_revoked:
                # Revoking the device ended this session already; this guards one that escaped.
                ended_because = DEVICE_REVOKED
            elif (token.rotated_at is None and session.kind != DEVICE and session.restaurant_id
                    and not session.is_member):
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
        if ended_because in (MEMBERSHIP_REVOKED, DEVICE_REVOKED):
            raise session_revoked()
        metrics.REFRESH_REUSE.inc()
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
        expires_at = min(now + self.sliding_ttl(session.kind, session.idle_lock_seconds),
                         session.absolute_expires_at)
        if not await unit.rotate(successor_id=successor_id, successor_digest=successor_digest,
                                 sealed=sealed, grace_until=now + self._grace,
                                 session_expires_at=expires_at, now=now):
            raise session_revoked()  # a logout won the race; nothing is committed
        return TokenPair(pair.access_token, pair.refresh_token, pair.expires_in,
                         seconds_until(expires_at, now), pair.user, session.device_id,
                         session.device_type)

    def sliding_ttl(self, kind: str, idle_lock_seconds: int) -> timedelta:
        """How far a refresh moves a session's expiry: a person's refresh lifetime; a device's
        own credential DEVICE_REFRESH_TTL; a staff session its idle lock."""
        if kind == STAFF:
            return timedelta(seconds=idle_lock_seconds)
        return DEVICE_REFRESH_TTL if kind == DEVICE else self._refresh_ttl

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
                         seconds_until(session.expires_at, now), _context_user(session),
                         session.device_id, session.device_type)

    def _successor(self, session: SessionView, now: datetime) -> tuple[TokenPair, bytes, str]:
        secret = refresh_tokens.new_secret()
        user = _context_user(session)
        access = self._issuer.issue(user_id=session.user_id, session_id=session.session_id,
                                    restaurant_id=session.restaurant_id, role=session.role,
                                    now=now.timestamp(), device_id=session.device_id,
                                    device_type=session.device_type,
                                    ttl_seconds=session.idle_lock_seconds or None)
        return (TokenPair(access.token, secret.token, access.expires_at - int(now.timestamp()), 0,
                          user), secret.digest, str(uuid.uuid4()))

    # --- the signed-in device ----------------------------------------------------------------

    async def logout(self, caller: Caller, *, all_sessions: bool) -> int:
        now = utcnow()
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
        if caller.device_id:
            raise PermissionDenied("DEVICE_FORBIDDEN", "a session on a paired device stays in the "
                                   "device's restaurant", device_type=caller.device_type)
        found = await self._store.user_with_memberships(caller.user_id)
        if found is None:
            raise session_revoked()
        user, memberships = found
        membership = next((m for m in memberships if m.restaurant_id == target), None)
        if membership is None:
            security_events.record("NOT_A_MEMBER", severity=security_events.INFO, ip=client_ip,
                                   user_id=user.id, restaurant_id=target)
            raise not_a_member(target)
        now = utcnow()
        new, secret = self._new_session(user, membership, client_ip, now)
        switched = await self._store.switch_session(old_session_id=caller.session_id, new=new,
                                                    reason=RESTAURANT_SWITCHED)
        if switched is None:
            raise session_revoked()
        old, expires_at = switched
        await self._revocations.publish([old], RESTAURANT_SWITCHED)
        pair = await self._pair_for_new_session(user, membership, new, secret, now)
        return TokenPair(pair.access_token, pair.refresh_token, pair.expires_in,
                         seconds_until(expires_at, now), pair.user)

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

    # --- the caller's sessions (devices) -----------------------------------------------------

    async def sessions(self, caller: Caller) -> list[SessionRecord]:
        return await self._store.live_sessions(caller.user_id, utcnow())

    async def end_session(self, caller: Caller, session_id: str) -> None:
        """Signs one of the caller's devices out; another user's session is SESSION_NOT_FOUND."""
        session_id = valid_uuid(session_id, "session_id")
        revoked = await self._store.revoke_own_session(caller.user_id, session_id,
                                                       reason=SESSION_ENDED, now=utcnow())
        if not revoked:
            raise NotFound("SESSION_NOT_FOUND", f"you have no live session {session_id}",
                           session_id=session_id)
        security_events.record(SESSION_ENDED, severity=security_events.INFO,
                               ip=caller.client_ip, user_id=caller.user_id, session_id=session_id,
                               by_session=caller.session_id)
        await self._revocations.publish(revoked, SESSION_ENDED)

    async def end_other_sessions(self, caller: Caller) -> int:
        revoked = await self._store.revoke_other_sessions(
            caller.user_id, keep_session_id=caller.session_id, reason=OTHER_SESSIONS_ENDED,
            now=utcnow())
        security_events.record(OTHER_SESSIONS_ENDED, severity=security_events.INFO,
                               ip=caller.client_ip, user_id=caller.user_id,
                               sessions_ended=len(revoked))
        await self._revocations.publish(revoked, OTHER_SESSIONS_ENDED)
        return len(revoked)

    def jwks_json(self) -> bytes:
        return json.dumps(self._keyring.jwks(), separators=(",", ":")).encode()


def _context_user(session: SessionView) -> ContextUser:
    return ContextUser(id=session.user_id, email=session.email, full_name=session.full_name,
                       role=session.role, restaurant_id=session.restaurant_id,
                       restaurant_name=session.restaurant_name)


def _cached(user: ContextUser) -> CachedSession:
    return CachedSession(user_id=user.id, email=user.email, full_name=user.full_name,
                         restaurant_id=user.restaurant_id, restaurant_name=user.restaurant_name,
                         role=user.role)


def _device(label: str, user_agent: str) -> tuple[str, str]:
    """What the session list shows about a device: bounded, one printable line each."""
    def clean(text: str, limit: int) -> str:
        return "".join(ch for ch in " ".join(text.split()) if ch.isprintable())[:limit]
    return clean(label, MAX_DEVICE_LABEL_LENGTH), clean(user_agent, MAX_USER_AGENT_LENGTH)
