"""The auth service's internal AuthAdminService, as the staff domain's `Accounts`.

Retries are the channel's (posmesh.common.clients: UNAVAILABLE, a few times within half a
second), in one place, never stacked here. Errors become ApiErrors: auth's own reasons (an
invalid email, a weak password, an unverified address) pass through, and so does its
`SERVER_BUSY` (its new-password hasher is full: retry after `retry_after_seconds`); any other
UNAVAILABLE is UNAVAILABLE `AUTH_UNAVAILABLE` (nothing was applied), and so is a timeout, whose
outcome is unknown (`auth_outcome`).
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from posmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from posmesh.common import errors
from services.staff.domain import MembershipChange, UserAccount

log = logging.getLogger(__name__)

T = TypeVar("T")
CALL_TIMEOUT_SECONDS = 3.0
# ClaimAccount hashes the new password in auth's paced new-password queue: up to
# ENROLLMENT_HASH_MAX_PENDING (10) waiting at ENROLLMENT_HASHES_PER_SECOND (5), about 2 s before a
# hash starts, longer while sign-ins pause the hasher; a full queue answers SERVER_BUSY at once.
# This deadline covers that wait (and stays below the edge's 15 s), so a busy hasher is answered,
# not timed out. Should it still run out after auth created the account, the retry is safe:
# ClaimAccount answers a verified account claimed with its own password as the same claim.
CLAIM_TIMEOUT_SECONDS = 10.0
_BY_CODE: dict[grpc.StatusCode, type[errors.ApiError]] = {
    cls.code: cls for cls in (
        errors.InvalidArgument, errors.NotFound, errors.AlreadyExists, errors.FailedPrecondition,
        errors.PermissionDenied, errors.ResourceExhausted, errors.Aborted,
    )
}
# UNAVAILABLE answers of auth that reach the client as they are: auth refused before changing
# anything and says when to retry (SERVER_BUSY: the new-password hasher's queue is full).
PASSED_THROUGH_UNAVAILABLE = frozenset({"SERVER_BUSY"})


def _reason(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    try:
        status = rpc_status.from_call(error)
    except Exception:  # a malformed status from a peer must not turn into an opaque 500
        status = None
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            return info.reason, dict(info.metadata)
    return "", {}


def translate(error: grpc.aio.AioRpcError, operation: str) -> errors.ApiError:
    code = error.code()
    if code is grpc.StatusCode.UNAVAILABLE:
        reason, metadata = _reason(error)
        if reason in PASSED_THROUGH_UNAVAILABLE:
            return errors.Unavailable(reason, error.details() or f"{operation} was refused",
                                      **metadata)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        # Auth may have applied it all the same: say so. Every auth call of this service is safe
        # to repeat (grants and revocations are idempotent, ClaimAccount with the same password).
        return errors.Unavailable(
            "AUTH_UNAVAILABLE", "the auth service did not answer in time, so whether it made the "
            "change is unknown; retrying the same request shortly is safe", retryable="true",
            auth_outcome="unknown")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return errors.Unavailable(
            "AUTH_UNAVAILABLE", "the auth service is unavailable; nothing was changed, retry shortly",
            retryable="true", auth_outcome="not_applied")
    reason, metadata = _reason(error)
    if (cls := _BY_CODE.get(code)) is not None:
        return cls(reason or code.name, error.details() or f"{operation} was refused", **metadata)
    log.error("auth %s failed unexpectedly: %s %s", operation, code.name, error.details())
    return errors.Internal("INTERNAL", "internal error; it has been logged")


def _account(user: auth_pb2.User) -> UserAccount:
    return UserAccount(user.id, user.email, user.full_name, user.email_verified)


class AuthAccounts:
    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = CALL_TIMEOUT_SECONDS,
                 claim_timeout: float = CLAIM_TIMEOUT_SECONDS) -> None:
        self._stub = auth_pb2_grpc.AuthAdminServiceStub(channel)
        self._timeout = timeout
        self._claim_timeout = claim_timeout

    @staticmethod
    async def _call(operation: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            raise translate(error, operation) from None

    async def claim_account(self, email: str, full_name: str, password: str,
                            client_ip: str) -> UserAccount:
        reply = await self._call("ClaimAccount", lambda: self._stub.ClaimAccount(
            auth_pb2.ClaimAccountRequest(email=email, full_name=full_name, password=password,
                                         client_ip=client_ip),
            timeout=self._claim_timeout))
        return _account(reply.user)

    async def find_user_by_email(self, email: str) -> UserAccount | None:
        reply = await self._call("FindUserByEmail", lambda: self._stub.FindUserByEmail(
            auth_pb2.FindUserByEmailRequest(email=email), timeout=self._timeout))
        return _account(reply.user) if reply.HasField("user") else None

    async def get_user(self, user_id: str) -> UserAccount | None:
        reply = await self._call("BatchGetUsers", lambda: self._stub.BatchGetUsers(
            auth_pb2.BatchGetUsersRequest(user_ids=[user_id]), timeout=self._timeout))
        for user in reply.users:
            if user.id == user_id:
                return _account(user)
        return None

    async def grant_membership(self, user_id: str, restaurant_id: str, restaurant_name: str,
                               role: str) -> MembershipChange:
        reply = await self._call("GrantMembership", lambda: self._stub.GrantMembership(
            auth_pb2.GrantMembershipRequest(user_id=user_id, restaurant_id=restaurant_id,
                                            restaurant_name=restaurant_name, role=role),
            timeout=self._timeout))
        return MembershipChange(reply.previous_role, reply.revoked_sessions)

    async def revoke_membership(self, user_id: str, restaurant_id: str) -> int:
        reply = await self._call("RevokeMembership", lambda: self._stub.RevokeMembership(
            auth_pb2.RevokeMembershipRequest(user_id=user_id, restaurant_id=restaurant_id),
            timeout=self._timeout))
        return reply.revoked_sessions

    async def create_floor_account(self, user_id: str, full_name: str, restaurant_id: str,
                                   restaurant_name: str, role: str) -> UserAccount:
        reply = await self._call("CreateFloorAccount", lambda: self._stub.CreateFloorAccount(
            auth_pb2.CreateFloorAccountRequest(user_id=user_id, full_name=full_name,
                                               restaurant_id=restaurant_id,
                                               restaurant_name=restaurant_name, role=role),
            timeout=self._timeout))
        return _account(reply.user)
