"""What other services change about users: memberships (granted, changed, revoked) and their
sessions. A new membership needs a verified email address."""

from __future__ import annotations

from posmesh.common import security_events
from posmesh.common.errors import AlreadyExists, NotFound
from posmesh.common.user_events import (
    MEMBERSHIP_GRANTED,
    MEMBERSHIP_REVOKED as MEMBERSHIP_REVOKED_EVENT,
    UserEvent,
    UserEventPublisher,
)
from services.auth.rules import (
    ADMIN_REVOKED,
    MEMBERSHIP_REVOKED,
    ROLE_CHANGED,
    email_not_verified,
    utcnow,
    valid_code,
    valid_name,
    valid_role,
    valid_uuid,
)
from services.auth.sessions import RevocationPublisher
from services.auth.store import (
    AuthStore,
    EmailNotVerified,
    EmailTaken,
    MembershipRecord,
    UserNotFound,
    UserRecord,
)


class Memberships:
    def __init__(self, *, store: AuthStore, revocations: RevocationPublisher,
                 user_events: UserEventPublisher) -> None:
        self._store = store
        self._revocations = revocations
        self._user_events = user_events

    async def create_floor_account(self, *, user_id: str, full_name: str, restaurant_id: str,
                                   restaurant_name: str, role: str) -> tuple[UserRecord, bool]:
        """An account for someone with a PIN only (no email, no password) and its membership."""
        user_id = valid_uuid(user_id, "user_id")
        full_name = valid_name(full_name, "full_name", required=True)
        restaurant_id = valid_uuid(restaurant_id, "restaurant_id")
        restaurant_name = valid_name(restaurant_name, "restaurant_name", required=False)
        role = valid_role(role)
        try:
            user, created = await self._store.create_floor_account(
                user_id=user_id, full_name=full_name, restaurant_id=restaurant_id,
                restaurant_name=restaurant_name, role=role, now=utcnow())
        except EmailTaken:
            raise AlreadyExists("EMAIL_TAKEN", f"user {user_id} is an account with an email "
                                "address, not a floor account", field="user_id") from None
        if created:
            security_events.record("FLOOR_ACCOUNT_CREATED", severity=security_events.INFO,
                                   user_id=user_id, restaurant_id=restaurant_id, role=role)
        return user, created

    async def grant_membership(self, *, user_id: str, restaurant_id: str, restaurant_name: str,
                               role: str) -> tuple[MembershipRecord, str, int]:
        user_id = valid_uuid(user_id, "user_id")
        restaurant_id = valid_uuid(restaurant_id, "restaurant_id")
        restaurant_name = valid_name(restaurant_name, "restaurant_name", required=False)
        role = valid_role(role)
        try:
            change = await self._store.grant_membership(
                user_id=user_id, restaurant_id=restaurant_id, restaurant_name=restaurant_name,
                role=role, now=utcnow(), revoke_reason=ROLE_CHANGED)
        except UserNotFound:
            raise NotFound("USER_NOT_FOUND", f"user {user_id} does not exist",
                           user_id=user_id) from None
        except EmailNotVerified:
            security_events.record("MEMBERSHIP_REFUSED_UNVERIFIED", user_id=user_id,
                                   restaurant_id=restaurant_id, role=role)
            raise email_not_verified("a membership") from None
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
            user_id=user_id, restaurant_id=restaurant_id, now=utcnow(), reason=MEMBERSHIP_REVOKED)
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
                                                         reason=reason, now=utcnow())
        await self._revocations.publish(revoked, reason)
        return len(revoked)
