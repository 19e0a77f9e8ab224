"""An account's identity: registration with a verified address, verification links, email and
password changes, password reset by mail, and (for the staff service) accounts claimed through
an invitation. Rules and errors are in rules.py; the SQL in identity_store.py.

Why each step is as it is (OWASP ASVS 5.0, V6 authentication):
- an unverified address can sign in but never be given a membership, so whoever registers
  someone else's address first gains nothing (pre-hijacking);
- links are single-use, stored only as hashes, expire, and a newer one replaces the older;
- a password reset answers the same whether the address has an account, and ends every session;
- new passwords are hashed by the enrollment hasher (a process of its own, paused while sign-ins
  hash, with its own bounded queue), so a flood of registrations cannot slow sign-ins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta

from posmesh.common import opaque_tokens, security_events
from posmesh.common.context import Caller
from posmesh.common.errors import ResourceExhausted
from posmesh.common.mail import MailTemplates
from posmesh.common.settings import Settings
from posmesh.common.tokens import session_revoked
from services.auth.identity_store import (
    IdentityStore,
    NewEmailToken,
    PasswordChangedMeanwhile,
    TokenAlreadyUsed,
)
from services.auth.enrollment_hashing import EnrollmentHashing
from services.auth.passwords import PasswordHashing
from services.auth.rate_limits import LoginLimiter, account_id, too_many_attempts
from services.auth.request_limits import Limit, RequestLimits, address_subject
from services.auth.rules import (
    ACCOUNT_CLAIMED,
    CHANGE_EMAIL,
    EMAIL_TOKEN_PREFIX,
    MAX_BATCH_USERS,
    MAX_PASSWORD_LENGTH,
    PASSWORD_CHANGED,
    PASSWORD_RESET,
    RESET_PASSWORD,
    VERIFY_EMAIL,
    check_password_policy,
    email_taken,
    email_token_used,
    invalid,
    normalise_email,
    usable_email_token,
    utcnow,
    valid_email,
    valid_name,
    valid_uuid,
    wrong_password,
)
from services.auth.sessions import RevocationPublisher
from services.auth.store import AuthStore, EmailTaken, UserRecord

log = logging.getLogger(__name__)

VERIFICATION_RESEND_GAP = timedelta(seconds=60)
# A reset request for a known address writes a link and a mail; for an unknown one it only looks.
# Both answer no sooner than this, so the time taken does not tell them apart (ASVS 5.0 V6.3.8).
RESET_REQUEST_MIN_SECONDS = 0.25
VERIFICATION_RESEND_WINDOW = timedelta(hours=1)


class Accounts:
    def __init__(self, *, settings: Settings, store: AuthStore, identities: IdentityStore,
                 sign_in_hashing: PasswordHashing, enrollment_hashing: EnrollmentHashing,
                 limiter: LoginLimiter, request_limits: RequestLimits,
                 templates: MailTemplates, revocations: RevocationPublisher) -> None:
        self._settings = settings
        self._store = store
        self._identities = identities
        self._sign_in_hashing = sign_in_hashing
        self._enrollment_hashing = enrollment_hashing
        self._limiter = limiter
        self._limits = request_limits
        self._templates = templates
        self._revocations = revocations
        self._verification_ttl = timedelta(hours=settings.email_verification_ttl_hours)
        self._reset_ttl = timedelta(minutes=settings.password_reset_ttl_minutes)
        self._register_per_ip = Limit("register:ip", settings.register_per_ip_per_hour, 3600)
        self._register_per_address = Limit("register:address",
                                           settings.register_per_address_per_hour, 3600)
        self._reset_per_address = Limit("reset:address",
                                        settings.password_reset_per_address_per_hour, 3600)
        self._reset_per_ip = Limit("reset:ip", settings.password_reset_per_ip_per_hour, 3600)

    # --- registration and verification -------------------------------------------------------

    async def register(self, *, email: str, password: str, full_name: str,
                       client_ip: str) -> None:
        """A new unverified account and its verification mail; for an address that has an
        account, a notice to it instead. The caller cannot tell which: the same checks, limits,
        hash and answer either way (ASVS 5.0 V6.3.8)."""
        email = valid_email(email)
        full_name = valid_name(full_name, "full_name", required=True)
        check_password_policy(password, email=email, min_length=self._settings.password_min_length)
        self._enrollment_hashing.refuse_if_full()  # a flood's overflow costs no limits or Redis
        await self._limits.check(self._limits.for_client(self._register_per_ip, client_ip),
                                 (self._register_per_address, address_subject(email)))
        password_hash = await self._enrollment_hashing.hash(password)
        token = opaque_tokens.issue(EMAIL_TOKEN_PREFIX)
        now = utcnow()
        try:
            user = await self._identities.create_user(
                email=email, full_name=full_name, password_hash=password_hash, now=now,
                verification=NewEmailToken(VERIFY_EMAIL, email, token.digest,
                                           now + self._verification_ttl),
                mail=lambda _: self._templates.verify_email(
                    to=email, full_name=full_name, token=token.token,
                    valid_for=self._verification_ttl))
        except EmailTaken:
            await self._tell_existing_account(email, client_ip, now)
            return
        security_events.record("ACCOUNT_REGISTERED", severity=security_events.INFO, ip=client_ip,
                               user_id=user.id)

    async def _tell_existing_account(self, email: str, client_ip: str, now: datetime) -> None:
        existing = await self._identities.user_by_email(email)
        await self._identities.send(self._templates.account_exists(
            to=email, full_name=existing.full_name if existing else email.split("@", 1)[0],
            attempted_at=now))
        security_events.record("REGISTRATION_OF_EXISTING_ADDRESS", severity=security_events.INFO,
                               ip=client_ip, user_id=existing.id if existing else "",
                               account=account_id(email))

    async def send_verification(self, caller: Caller) -> bool:
        """A new verification link for the caller's address; False when it is verified."""
        user = await self._current_user(caller)
        if user.email_verified:
            return False
        now = utcnow()
        await self._check_resend(user.id, VERIFY_EMAIL, now)
        token = opaque_tokens.issue(EMAIL_TOKEN_PREFIX)
        await self._identities.issue_token(
            user_id=user.id, now=now,
            token=NewEmailToken(VERIFY_EMAIL, user.email, token.digest,
                                now + self._verification_ttl),
            mail=self._templates.verify_email(to=user.email, full_name=user.full_name,
                                              token=token.token, valid_for=self._verification_ttl))
        security_events.record("EMAIL_VERIFICATION_SENT", severity=security_events.INFO,
                               ip=caller.client_ip, user_id=user.id)
        return True

    async def verify_email(self, *, token: str, client_ip: str) -> UserRecord:
        state = usable_email_token(await self._email_token(token), (VERIFY_EMAIL, CHANGE_EMAIL),
                                   utcnow())
        previous = None
        if state.purpose == CHANGE_EMAIL:
            (previous,) = await self._store.users_by_ids([state.user_id]) or [None]
        now = utcnow()
        notice = None
        if previous is not None and previous.email != state.email:
            notice = self._templates.email_changed_notice(
                to=previous.email, full_name=previous.full_name, new_email=state.email,
                changed_at=now)
        try:
            user = await self._identities.verify_email(state, now=now, notice=notice)
        except TokenAlreadyUsed:  # used by a concurrent request
            raise email_token_used() from None
        except EmailTaken:
            raise email_taken() from None
        kind = "EMAIL_CHANGED" if notice is not None else "EMAIL_VERIFIED"
        security_events.record(kind, severity=security_events.INFO, ip=client_ip, user_id=user.id,
                               **({"previous": account_id(previous.email)} if notice else {}))
        return user

    # --- changes by the signed-in owner ------------------------------------------------------

    async def change_email(self, caller: Caller, *, new_email: str,
                           current_password: str) -> str:
        """Mails a link to `new_email`; the account moves there when it is used."""
        new_email = valid_email(new_email)
        user = await self._current_user(caller)
        await self._check_current_password(user, current_password, caller.client_ip)
        if new_email == user.email:
            raise invalid("new_email", "that is already your email address")
        if await self._identities.user_by_email(new_email) is not None:
            raise email_taken()
        now = utcnow()
        await self._check_resend(user.id, CHANGE_EMAIL, now)
        token = opaque_tokens.issue(EMAIL_TOKEN_PREFIX)
        await self._identities.issue_token(
            user_id=user.id, now=now,
            token=NewEmailToken(CHANGE_EMAIL, new_email, token.digest,
                                now + self._verification_ttl),
            mail=self._templates.verify_email(to=new_email, full_name=user.full_name,
                                              token=token.token, valid_for=self._verification_ttl))
        security_events.record("EMAIL_CHANGE_REQUESTED", ip=caller.client_ip, user_id=user.id,
                               new_address=account_id(new_email))
        return new_email

    async def change_password(self, caller: Caller, *, current_password: str,
                              new_password: str) -> int:
        """The new password for this account; every other session ends."""
        user = await self._current_user(caller)
        await self._check_current_password(user, current_password, caller.client_ip)
        check_password_policy(new_password, email=user.email,
                              min_length=self._settings.password_min_length)
        new_hash = await self._enrollment_hashing.hash(new_password)
        now = utcnow()
        try:
            revoked = await self._identities.change_password(
                user_id=user.id, old_hash=user.password_hash or "", new_hash=new_hash,
                keep_session_id=caller.session_id, now=now, reason=PASSWORD_CHANGED,
                notice=self._templates.password_changed(to=user.email, full_name=user.full_name,
                                                        changed_at=now))
        except PasswordChangedMeanwhile:
            raise wrong_password() from None
        security_events.record(PASSWORD_CHANGED, ip=caller.client_ip, user_id=user.id,
                               sessions_ended=len(revoked))
        await self._revocations.publish(revoked, PASSWORD_CHANGED)
        return len(revoked)

    # --- password reset ------------------------------------------------------------------------

    async def request_password_reset(self, *, email: str, client_ip: str) -> None:
        """Mails a reset link when the address has an account. Answers the same either way, as
        late either way, and spends the same limits either way."""
        started = time.monotonic()
        try:
            await self._request_password_reset(email=email, client_ip=client_ip)
        finally:
            await asyncio.sleep(max(0.0, started + RESET_REQUEST_MIN_SECONDS - time.monotonic()))

    async def _request_password_reset(self, *, email: str, client_ip: str) -> None:
        email = valid_email(email)
        await self._limits.check((self._reset_per_address, address_subject(email)),
                                 self._limits.for_client(self._reset_per_ip, client_ip))
        user = await self._identities.user_by_email(email)
        if user is None:
            security_events.record("PASSWORD_RESET_UNKNOWN_ADDRESS", severity=security_events.INFO,
                                   ip=client_ip, account=account_id(email))
            return
        now = utcnow()
        token = opaque_tokens.issue(EMAIL_TOKEN_PREFIX)
        await self._identities.issue_token(
            user_id=user.id, now=now,
            token=NewEmailToken(RESET_PASSWORD, user.email, token.digest, now + self._reset_ttl),
            mail=self._templates.password_reset(to=user.email, full_name=user.full_name,
                                                token=token.token, valid_for=self._reset_ttl))
        security_events.record("PASSWORD_RESET_REQUESTED", ip=client_ip, user_id=user.id)

    async def reset_password(self, *, token: str, new_password: str, client_ip: str) -> int:
        now = utcnow()
        state = usable_email_token(await self._email_token(token), (RESET_PASSWORD,), now)
        check_password_policy(new_password, email=state.email,
                              min_length=self._settings.password_min_length)
        (user,) = await self._store.users_by_ids([state.user_id]) or [None]
        if user is None:
            raise session_revoked()  # the account was deleted meanwhile
        new_hash = await self._enrollment_hashing.hash(new_password)
        try:
            user, revoked = await self._identities.reset_password(
                state, password_hash=new_hash, now=utcnow(), reason=PASSWORD_RESET,
                notice=self._templates.password_changed(to=user.email, full_name=user.full_name,
                                                        changed_at=now))
        except TokenAlreadyUsed:  # used by a concurrent request
            raise email_token_used() from None
        security_events.record(PASSWORD_RESET, ip=client_ip, user_id=user.id,
                               sessions_ended=len(revoked))
        await self._revocations.publish(revoked, PASSWORD_RESET)
        return len(revoked)

    # --- for the staff service -----------------------------------------------------------------

    async def claim(self, *, email: str, full_name: str, password: str,
                    client_ip: str) -> tuple[UserRecord, bool, bool]:
        """(user, created, took_over) for someone who proved they receive mail at `email`.

        Idempotent for the same address and password: a verified account is never taken over,
        but a claim with its own password answers it as it is (created and took_over false).
        That is what makes a retry safe when the caller never got the answer of a claim that
        went through (its deadline ran out while the new password waited for the hasher): the
        retry finds the account that claim made, and its password proves it is the same
        claimant. Checked like a sign-in (the brute-force limits count it), before any new
        password is hashed."""
        email = valid_email(email)
        full_name = valid_name(full_name, "full_name", required=False)
        check_password_policy(password, email=email, min_length=self._settings.password_min_length)
        existing = await self._identities.user_by_email(email)
        if existing is not None and existing.email_verified:
            return await self._claimed_already(existing, password, client_ip), False, False
        password_hash = await self._enrollment_hashing.hash(password)
        try:
            claim = await self._identities.claim(
                email=email, full_name=full_name or email.split("@", 1)[0],
                password_hash=password_hash, now=utcnow(), reason=ACCOUNT_CLAIMED)
        except EmailTaken:
            # Verified meanwhile: by a concurrent claim (the same request sent twice?), or by
            # its owner. The same rule applies.
            existing = await self._identities.user_by_email(email)
            if existing is None:  # and moved to another address since (ChangeEmail)
                raise email_taken() from None
            return await self._claimed_already(existing, password, client_ip), False, False
        if claim.took_over:
            # Someone registered this address without receiving its mail: they lose it now.
            security_events.record(ACCOUNT_CLAIMED, severity=security_events.CRITICAL,
                                   ip=client_ip, user_id=claim.user.id,
                                   sessions_ended=len(claim.revoked))
            await self._revocations.publish(claim.revoked, ACCOUNT_CLAIMED)
        else:
            security_events.record("ACCOUNT_CREATED_BY_INVITATION", severity=security_events.INFO,
                                   ip=client_ip, user_id=claim.user.id)
        return claim.user, claim.created, claim.took_over

    async def _claimed_already(self, user: UserRecord, password: str,
                               client_ip: str) -> UserRecord:
        """The verified account of a claimed address, when `password` is its own; else
        EMAIL_TAKEN (its owner signs in and accepts)."""
        if not await self._password_matches(user, password, client_ip,
                                            wrong_event="CLAIM_PASSWORD_WRONG"):
            raise email_taken()
        security_events.record("ACCOUNT_CLAIM_REPEATED", severity=security_events.INFO,
                               ip=client_ip, user_id=user.id)
        return user

    async def find_by_email(self, email: str) -> UserRecord | None:
        return await self._identities.user_by_email(valid_email(email))

    async def batch_get(self, user_ids: list[str]) -> list[UserRecord]:
        if len(user_ids) > MAX_BATCH_USERS:
            raise invalid("user_ids", f"at most {MAX_BATCH_USERS} user ids per call")
        ids = list(dict.fromkeys(valid_uuid(user_id, "user_ids") for user_id in user_ids))
        return await self._store.users_by_ids(ids)

    # --- helpers -------------------------------------------------------------------------------

    async def _current_user(self, caller: Caller) -> UserRecord:
        (user,) = await self._store.users_by_ids([caller.user_id]) or [None]
        if user is None:
            raise session_revoked()
        return user

    async def _email_token(self, token: str):
        digest = opaque_tokens.digest_of(token, EMAIL_TOKEN_PREFIX)
        return await self._identities.email_token(digest) if digest is not None else None

    async def _check_current_password(self, user: UserRecord, password: str,
                                      client_ip: str) -> None:
        if not await self._password_matches(user, password, client_ip,
                                            wrong_event="CURRENT_PASSWORD_WRONG"):
            raise wrong_password()

    async def _password_matches(self, user: UserRecord, password: str, client_ip: str, *,
                                wrong_event: str) -> bool:
        """Like a sign-in: counted against the account's and the address's brute-force limits
        (TOO_MANY_ATTEMPTS once they lock); a wrong password is the security event
        `wrong_event`."""
        if not password or len(password) > MAX_PASSWORD_LENGTH:
            return False
        attempt = await self._limiter.begin(self._limiter.subjects(normalise_email(user.email),
                                                                   client_ip))
        try:
            result = await self._sign_in_hashing.verify(user.password_hash, password)
        except BaseException:
            await self._limiter.abandoned(attempt)
            raise
        if not result.ok:
            security_events.record(wrong_event, ip=client_ip, user_id=user.id)
            lockout = await self._limiter.failed(attempt)
            if lockout is not None:
                security_events.record("LOGIN_LOCKOUT", ip=client_ip, user_id=user.id,
                                       locked=lockout.subject_kind, seconds=lockout.seconds,
                                       account=account_id(user.email), during="password check")
                raise too_many_attempts(lockout.seconds)
            return False
        await self._limiter.succeeded(attempt)
        return True

    async def _check_resend(self, user_id: str, purpose: str, now: datetime) -> None:
        """At most one link a minute and VERIFICATION_EMAILS_PER_HOUR an hour per account."""
        if await self._identities.recent_tokens(user_id, purpose,
                                                now - VERIFICATION_RESEND_GAP) > 0:
            raise ResourceExhausted("TOO_MANY_EMAILS", "a link was sent less than a minute ago; "
                                    "check your mail or retry shortly",
                                    retry_after_seconds=str(int(VERIFICATION_RESEND_GAP.seconds)))
        sent = await self._identities.recent_tokens(user_id, purpose,
                                                    now - VERIFICATION_RESEND_WINDOW)
        if sent >= self._settings.verification_emails_per_hour:
            raise ResourceExhausted("TOO_MANY_EMAILS", "too many links were sent in the last "
                                    "hour; retry later", retry_after_seconds="3600")
