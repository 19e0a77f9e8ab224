"""Invitations: how someone comes to work at a restaurant. A manager never creates an account or
knows a password: creating an employee mails their address a single-use link, and the membership
exists only once the person who receives that mail accepts it (OWASP ASVS 5.0 V6: an account
registered beforehand by someone else with that address gains nothing).

Accepting, two ways:
- signed in as a verified account with the invited address (the mail's token, or the invitation's
  id from ListMyInvitations);
- not signed in, with the mail's token and a password of one's own: auth creates the account, or
  takes over an unverified one of that address (its registrant never received its mail), and the
  address counts as verified.

No network call is made under a row lock, but for one rare case: the account and the membership
are settled with auth first, then one transaction re-checks the invitation under its lock and
activates the employee; if that transaction refuses, the membership is put back as it was. The
rare case: a manager changed the invited employee's role after that grant, so the record's role
is granted again while its row is locked (the role granted is then the role recorded).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from posmesh.common import opaque_tokens, security_events
from posmesh.common.context import Caller
from posmesh.common.errors import (
    AlreadyExists,
    ApiError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from posmesh.common.mail import MailTemplates
from posmesh.common.settings import Settings
from posmesh.common.user_events import INVITATION_RECEIVED, UserEvent
from services.staff import paging, rules, validation
from services.staff.models import (
    ACTIVE,
    DEACTIVATED,
    EXPIRED,
    INVITATION_STATES,
    PENDING,
    Employee,
    Invitation,
    NewInvitation,
    Page,
    Restaurant,
)
from services.staff.store import StaffStore, StaffTransaction

log = logging.getLogger(__name__)

TOKEN_PREFIX = "pmiv_"
# The send limits, per address and restaurant: one mail a minute, and INVITATION_SENDS_PER_DAY
# in any 24 hours (a rolling window). Every mail counts, whichever invitation it belonged to: a
# resend, and the new invitation an undelete sends, alike.
RESEND_GAP = timedelta(seconds=60)
SEND_WINDOW = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Acceptance:
    invitation: Invitation
    employee: Employee
    user_id: str
    email: str


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _invitation_id(raw: str) -> uuid.UUID:
    return validation.resource_id(raw, "invitation_id")


def _whole_seconds(wait: timedelta) -> str:
    return str(max(1, math.ceil(wait.total_seconds())))


def send_refusal(sent: Sequence[datetime], now: datetime, per_day: int) -> ResourceExhausted | None:
    """Why this restaurant may not mail an invitation to an address now, given when it did in the
    last 24 hours (oldest first); None when it may."""
    recent = [time for time in sent if now - time < SEND_WINDOW]
    if recent and now - recent[-1] < RESEND_GAP:
        return ResourceExhausted(
            "TOO_MANY_EMAILS", "an invitation was mailed to this address less than a minute ago",
            retry_after_seconds=_whole_seconds(recent[-1] + RESEND_GAP - now))
    if len(recent) >= per_day:
        # A mail may leave once enough of these are older than a day to leave one slot free.
        frees = recent[len(recent) - per_day] + SEND_WINDOW
        return ResourceExhausted(
            "TOO_MANY_EMAILS", f"{len(recent)} invitations were mailed to this address in the "
            f"last 24 hours, the most allowed", retry_after_seconds=_whole_seconds(frees - now))
    return None


def invitation_not_found(invitation_id: str) -> NotFound:
    return NotFound("INVITATION_NOT_FOUND", f"no invitation {invitation_id[:64]} here",
                    invitation_id=invitation_id[:64])


def closed_invitation_error(invitation: Invitation, now: datetime) -> ApiError | None:
    """Why an invitation cannot be used now; None while it is pending."""
    state = invitation.state_at(now)
    if state == PENDING:
        return None
    return {
        "accepted": FailedPrecondition("INVITATION_USED", "this invitation was accepted already; "
                                       "sign in"),
        "revoked": FailedPrecondition("INVITATION_REVOKED", "this invitation was revoked by the "
                                      "restaurant"),
        "expired": FailedPrecondition("INVITATION_EXPIRED", "this invitation has expired; ask the "
                                      "restaurant to send it again"),
    }[state]


class Invitations:
    def __init__(self, store: StaffStore, accounts, templates: MailTemplates, user_events,
                 settings: Settings) -> None:
        self.store = store
        self.accounts = accounts
        self.templates = templates
        self.user_events = user_events
        self.ttl = timedelta(hours=settings.invitation_ttl_hours)
        self.sends_per_day = settings.invitation_sends_per_day

    # --- sending (inside the caller's transaction) ---------------------------------------------

    async def refuse_if_sent_too_often(self, tx: StaffTransaction, restaurant_id: uuid.UUID,
                                       email: str) -> None:
        """TOO_MANY_EMAILS when the send limits leave no mail to `email` now. Checked before
        every mail but the first to an address (CreateEmployee refuses an address that has a
        record here, and records are never deleted, so its first mail is always the first)."""
        now = _now()
        sent = await tx.invitation_send_times(restaurant_id, email, since=now - SEND_WINDOW)
        if (refusal := send_refusal(sent, now, self.sends_per_day)) is not None:
            raise refusal

    async def send_in(self, tx: StaffTransaction, restaurant: Restaurant, employee: Employee,
                      inviter: Employee) -> Invitation:
        """A new invitation for an INVITED employee, and its mail, in the same transaction."""
        token = opaque_tokens.issue(TOKEN_PREFIX)
        invitation = await tx.insert_invitation(restaurant.id, NewInvitation(
            employee_id=employee.id, email=employee.email or "", token_digest=token.digest,
            invited_by=str(inviter.user_id), expire_time=_now() + self.ttl))
        await tx.enqueue_mail(self._mail(invitation, inviter, token.token))
        return invitation

    def _mail(self, invitation: Invitation, inviter: Employee, token: str):
        inviter_name = " ".join(p for p in (inviter.first_name, inviter.last_name) if p)
        return self.templates.invitation(
            to=invitation.email, restaurant_name=invitation.restaurant_name,
            inviter_name=inviter_name or "Your manager", role=invitation.access_role,
            token=token, valid_for=self.ttl)

    async def announce(self, invitation: Invitation) -> None:
        """Tells the invited person's open screens, when they have a verified account. Best
        effort after the commit: the mail is what carries the invitation."""
        try:
            user = await self.accounts.find_user_by_email(invitation.email)
        except ApiError as error:
            log.info("no invitation.received event: %s", error.reason)
            return
        if user is None or not user.email_verified:
            return  # never tell an unverified registrant of this address anything
        await self.user_events.publish(UserEvent(user.id, INVITATION_RECEIVED, {
            "invitation_id": str(invitation.id), "restaurant_id": str(invitation.restaurant_id),
            "restaurant_name": invitation.restaurant_name, "role": invitation.access_role}))

    # --- managers --------------------------------------------------------------------------------

    async def list(self, caller: Caller, page_size: int, page_token: str,
                   state: str) -> Page[Invitation]:
        state = (state or PENDING).strip().lower()
        if state not in INVITATION_STATES:
            raise InvalidArgument("INVALID_FILTER", f"state: {state[:20]!r} is not one of "
                                  f"{', '.join(INVITATION_STATES)}", field="state")
        scope = f"invitations:{caller.restaurant_id}:{state}"
        page = paging.request(page_size, page_token, scope)
        rows = await self.store.invitations(uuid.UUID(caller.restaurant_id), state, page)
        items, token = paging.page_of(rows, page.size, lambda i: (i.create_time, i.id), scope)
        return Page(items, token)

    async def resend(self, caller: Caller, invitation_id: str) -> Invitation:
        rid, iid = uuid.UUID(caller.restaurant_id), _invitation_id(invitation_id)
        async with self.store.transaction() as tx:
            restaurant, inviter = await self._managing(tx, caller, rid)
            invitation = await tx.invitation_for_update(rid, invitation_id=iid)
            if invitation is None:
                raise invitation_not_found(invitation_id)
            self._may_manage(caller, inviter, invitation, "ResendInvitation")
            now = _now()
            state = invitation.state_at(now)
            if state not in (PENDING, EXPIRED):
                raise closed_invitation_error(invitation, now)
            await self.refuse_if_sent_too_often(tx, rid, invitation.email)
            token = opaque_tokens.issue(TOKEN_PREFIX)
            invitation = await tx.resend_invitation(invitation.id, token_digest=token.digest,
                                                    expire_time=now + self.ttl)
            await tx.enqueue_mail(self._mail(invitation, inviter, token.token))
        security_events.record("INVITATION_RESENT", severity=security_events.INFO,
                               ip=caller.client_ip, user_id=caller.user_id,
                               restaurant_id=caller.restaurant_id, invitation_id=str(iid))
        return invitation

    async def revoke(self, caller: Caller, invitation_id: str) -> Invitation:
        """The link stops working and the invited employee is deactivated."""
        rid, iid = uuid.UUID(caller.restaurant_id), _invitation_id(invitation_id)
        async with self.store.transaction() as tx:
            _, inviter = await self._managing(tx, caller, rid)
            invitation = await tx.invitation_for_update(rid, invitation_id=iid)
            if invitation is None:
                raise invitation_not_found(invitation_id)
            self._may_manage(caller, inviter, invitation, "RevokeInvitation")
            if invitation.accept_time is not None:
                raise closed_invitation_error(invitation, _now())
            if invitation.revoke_time is not None:
                return invitation  # revoked already: nothing changes
            invitation = await tx.close_invitation(invitation.id)
            employee = await tx.employee_for_update(rid, invitation.employee_id)
            if employee is not None and employee.state != ACTIVE:
                employee = await tx.deactivate_employee(employee.id)
                await tx.record_change(employee, caller.user_id, "invitation_revoked", {})
        security_events.record("INVITATION_REVOKED", severity=security_events.INFO,
                               ip=caller.client_ip, user_id=caller.user_id,
                               restaurant_id=caller.restaurant_id, invitation_id=str(iid))
        return invitation

    # --- the invited person ----------------------------------------------------------------------

    async def mine(self, caller: Caller) -> list[Invitation]:
        user = await self.accounts.get_user(caller.user_id)
        if user is None or not user.email_verified:
            return []  # an unverified address proves nothing: nothing is shown
        return await self.store.pending_invitations_for(user.email)

    async def accept(self, caller: Caller | None, *, token: str, invitation_id: str,
                     password: str, full_name: str, client_ip: str) -> Acceptance:
        invitation = await self._find(caller, token, invitation_id)
        now = _now()
        if (error := closed_invitation_error(invitation, now)) is not None:
            raise error
        if caller is not None:
            user = await self.accounts.get_user(caller.user_id)
            if user is None:
                raise Unauthenticated("TOKEN_INVALID", "the account of this token no longer exists")
            if user.email != invitation.email:
                security_events.record("INVITATION_EMAIL_MISMATCH", ip=client_ip,
                                       user_id=caller.user_id,
                                       restaurant_id=str(invitation.restaurant_id))
                raise PermissionDenied(
                    "INVITATION_EMAIL_MISMATCH",
                    "this invitation is for another email address than your account's; sign in "
                    "with that address, or open the link without signing in")
            if not user.email_verified:
                raise FailedPrecondition(
                    "EMAIL_NOT_VERIFIED", "verify your email address first (use the link we "
                    "mailed you), then accept", action="VERIFY_EMAIL")
            user_id, email = user.id, user.email
        else:
            if not token:
                raise InvalidArgument("FIELD_REQUIRED", "token: the link's token is required when "
                                      "you are not signed in", field="token")
            if not password:
                raise InvalidArgument("FIELD_REQUIRED", "password: choose a password for your "
                                      "account (or sign in and accept)", field="password")
            claimed = await self.accounts.claim_account(
                invitation.email, full_name or await self._employee_name(invitation), password,
                client_ip)
            user_id, email = claimed.id, claimed.email
        return await self._activate(invitation, user_id, email, client_ip)

    async def _find(self, caller: Caller | None, token: str, invitation_id: str) -> Invitation:
        token, invitation_id = token.strip(), invitation_id.strip()
        async with self.store.transaction() as tx:
            if token:
                digest = opaque_tokens.digest_of(token, TOKEN_PREFIX)
                found = (await tx.invitation_for_update(None, token_digest=digest)
                         if digest is not None else None)
                if found is None:
                    security_events.record("INVITATION_TOKEN_INVALID",
                                           user_id=caller.user_id if caller else "")
                    raise InvalidArgument("INVITATION_INVALID", "this invitation link is not valid "
                                          "(a newer one may have been sent)", field="token")
                return found
            if caller is None or not invitation_id:
                raise InvalidArgument("FIELD_REQUIRED", "token: the invitation link's token is "
                                      "required (or sign in and send invitation_id)",
                                      field="token")
            found = await tx.invitation_for_update(None, invitation_id=_invitation_id(invitation_id))
            if found is None:
                raise invitation_not_found(invitation_id)
            return found

    async def _activate(self, invitation: Invitation, user_id: str, email: str,
                        client_ip: str) -> Acceptance:
        """The membership first (auth), then the employee under the invitation's lock; the
        membership is put back if that transaction refuses."""
        rid = str(invitation.restaurant_id)
        granted_role = invitation.access_role  # the record's role when the invitation was read
        granted = await self.accounts.grant_membership(user_id, rid, invitation.restaurant_name,
                                                       granted_role)
        try:
            async with self.store.transaction() as tx:
                current = await tx.invitation_for_update(invitation.restaurant_id,
                                                         invitation_id=invitation.id)
                if current is None:
                    raise invitation_not_found(str(invitation.id))
                if (error := closed_invitation_error(current, _now())) is not None:
                    raise error
                employee = await tx.employee_for_update(invitation.restaurant_id,
                                                        invitation.employee_id)
                if employee is None or employee.state == DEACTIVATED:
                    raise FailedPrecondition("INVITATION_REVOKED", "the restaurant withdrew this "
                                             "invitation")
                if await tx.employee_of_user(invitation.restaurant_id, uuid.UUID(user_id)):
                    raise AlreadyExists("EMPLOYEE_EXISTS", "your account already has an employee "
                                        "record in this restaurant")
                if employee.access_role != granted_role:
                    # A manager changed the role since the grant. The employee row is locked now,
                    # so the role cannot change again before the commit: grant the recorded one.
                    # (What to put back on failure stays the role from before the first grant.)
                    await self.accounts.grant_membership(user_id, rid, invitation.restaurant_name,
                                                         employee.access_role)
                employee = await tx.activate_employee(employee.id, uuid.UUID(user_id))
                await tx.record_change(employee, user_id, "invitation_accepted",
                                       {"access_role": employee.access_role})
                current = await tx.close_invitation(current.id, accepted_by=uuid.UUID(user_id))
        except BaseException:
            await self._undo_grant(user_id, rid, invitation, granted.previous_role)
            raise
        security_events.record("INVITATION_ACCEPTED", severity=security_events.INFO, ip=client_ip,
                               user_id=user_id, restaurant_id=rid,
                               invitation_id=str(invitation.id), role=employee.access_role)
        return Acceptance(current, employee, user_id, email)

    async def _undo_grant(self, user_id: str, restaurant_id: str, invitation: Invitation,
                          previous_role: str) -> None:
        try:
            if previous_role:
                await self.accounts.grant_membership(user_id, restaurant_id,
                                                     invitation.restaurant_name, previous_role)
            else:
                await self.accounts.revoke_membership(user_id, restaurant_id)
        except Exception as exc:
            log.error("could not take back the membership of user %s in %s after the acceptance "
                      "failed: %r", user_id, restaurant_id, exc)

    async def _employee_name(self, invitation: Invitation) -> str:
        employee = await self.store.employee(invitation.restaurant_id, invitation.employee_id)
        if employee is None:
            return ""
        return " ".join(p for p in (employee.first_name, employee.last_name) if p)

    # --- helpers ---------------------------------------------------------------------------------

    async def _managing(self, tx: StaffTransaction, caller: Caller,
                        rid: uuid.UUID) -> tuple[Restaurant, Employee]:
        restaurant = await tx.lock_restaurant(rid)
        if restaurant is None:
            raise NotFound("RESTAURANT_NOT_FOUND", f"no restaurant {rid}")
        actor = await tx.employee_of_user(rid, uuid.UUID(caller.user_id))
        if actor is None or not actor.active:
            raise PermissionDenied("NOT_A_MEMBER", f"you are not an active employee of "
                                   f"restaurant {rid}", restaurant_id=str(rid))
        return restaurant, actor

    @staticmethod
    def _may_manage(caller: Caller, actor: Employee, invitation: Invitation, rpc: str) -> None:
        if denial := rules.role_denial(actor.access_role, f"staff.{rpc}",
                                       target_role=invitation.access_role):
            security_events.record("ACCESS_DENIED", ip=caller.client_ip, user_id=caller.user_id,
                                   restaurant_id=caller.restaurant_id, reason=denial.reason)
            raise denial
