"""gRPC <-> domain for AuthService and AuthAdminService. Nothing else lives here: the interceptor
has already authenticated the caller and turns raised ApiErrors into google.rpc.Status."""

from __future__ import annotations

from datetime import timezone

from google.api import httpbody_pb2
from google.protobuf import timestamp_pb2

from posmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from posmesh.common import context
from services.auth.accounts import Accounts
from services.auth.memberships import Memberships
from services.auth.revocation_log import RevocationLog
from services.auth.rules import ContextUser, TokenPair
from services.auth.security_log import SecurityLog
from services.auth.signin import SignIn
from services.auth.store import MembershipRecord, SessionRecord, UserRecord


def _timestamp(moment) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _user(user: UserRecord) -> auth_pb2.User:
    return auth_pb2.User(id=user.id, email=user.email, full_name=user.full_name,
                         create_time=_timestamp(user.created_at),
                         email_verified=user.email_verified)


def _session(session: SessionRecord, current_id: str) -> auth_pb2.Session:
    return auth_pb2.Session(id=session.session_id, device_label=session.device_label,
                            user_agent=session.user_agent, ip=session.client_ip,
                            create_time=_timestamp(session.created_at),
                            last_used_time=_timestamp(session.last_used_at),
                            restaurant_id=session.restaurant_id,
                            current=session.session_id == current_id)


def _context_user(user: ContextUser) -> auth_pb2.ContextUser:
    return auth_pb2.ContextUser(id=user.id, email=user.email, full_name=user.full_name,
                                role=user.role, restaurant_id=user.restaurant_id,
                                restaurant_name=user.restaurant_name)


def _membership(membership: MembershipRecord) -> auth_pb2.Membership:
    return auth_pb2.Membership(restaurant_id=membership.restaurant_id,
                               restaurant_name=membership.restaurant_name, role=membership.role)


def _pair_fields(pair: TokenPair) -> dict:
    return dict(access_token=pair.access_token, refresh_token=pair.refresh_token,
                token_type="Bearer", expires_in=pair.expires_in,
                refresh_expires_in=pair.refresh_expires_in, user=_context_user(pair.user),
                restaurant_id=pair.restaurant_id, role=pair.role)


def _device_fields(pair: TokenPair) -> dict:
    if not pair.device_id:
        return {}
    return dict(device_id=pair.device_id,
                device_type=auth_pb2.DeviceType.Value(pair.device_type))


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, sign_in: SignIn, accounts: Accounts) -> None:
        self._sign_in = sign_in
        self._accounts = accounts

    async def Register(self, request, ctx) -> auth_pb2.RegisterResponse:
        await self._accounts.register(email=request.email, password=request.password,
                                      full_name=request.full_name,
                                      client_ip=context.request_info().client_ip)
        return auth_pb2.RegisterResponse()

    async def Login(self, request, ctx) -> auth_pb2.LoginResponse:
        info = context.request_info()
        pair = await self._sign_in.login(email=request.email, password=request.password,
                                         restaurant_id=request.restaurant_id,
                                         client_ip=info.client_ip,
                                         device_label=request.device_label,
                                         user_agent=info.user_agent)
        return auth_pb2.LoginResponse(**_pair_fields(pair))

    async def RefreshToken(self, request, ctx) -> auth_pb2.RefreshTokenResponse:
        pair = await self._sign_in.refresh(refresh_token=request.refresh_token,
                                           client_ip=context.request_info().client_ip)
        return auth_pb2.RefreshTokenResponse(**_pair_fields(pair), **_device_fields(pair))

    async def Logout(self, request, ctx) -> auth_pb2.LogoutResponse:
        count = await self._sign_in.logout(context.current(), all_sessions=request.all_sessions)
        return auth_pb2.LogoutResponse(revoked_sessions=count)

    async def VerifyToken(self, request, ctx) -> auth_pb2.VerifyTokenResponse:
        result = await self._sign_in.verify(request.token or context.request_info().bearer_token)
        response = auth_pb2.VerifyTokenResponse(valid=result.valid, reason=result.reason)
        if result.claims is not None:
            c = result.claims
            response.claims.CopyFrom(auth_pb2.TokenClaims(
                iss=c.iss, aud=c.aud, sub=c.sub, sid=c.sid, restaurant_id=c.restaurant_id,
                role=c.role, jti=c.jti, iat=c.iat, exp=c.exp, device_id=c.device_id,
                device_type=c.device_type))
        if result.user is not None:
            response.user.CopyFrom(_context_user(result.user))
        return response

    async def GetMe(self, request, ctx) -> auth_pb2.GetMeResponse:
        me = await self._sign_in.me(context.current())
        return auth_pb2.GetMeResponse(user=_user(me.user),
                                      memberships=[_membership(m) for m in me.memberships],
                                      restaurant_id=me.restaurant_id, role=me.role,
                                      session_id=me.session_id)

    async def SwitchRestaurant(self, request, ctx) -> auth_pb2.SwitchRestaurantResponse:
        pair = await self._sign_in.switch_restaurant(
            context.current(), restaurant_id=request.restaurant_id,
            client_ip=context.request_info().client_ip)
        return auth_pb2.SwitchRestaurantResponse(**_pair_fields(pair))

    async def GetJwks(self, request, ctx) -> httpbody_pb2.HttpBody:
        return httpbody_pb2.HttpBody(content_type="application/json",
                                     data=self._sign_in.jwks_json())

    async def VerifyEmail(self, request, ctx) -> auth_pb2.VerifyEmailResponse:
        user = await self._accounts.verify_email(token=request.token,
                                                 client_ip=context.request_info().client_ip)
        return auth_pb2.VerifyEmailResponse(user=_user(user))

    async def SendVerificationEmail(self, request, ctx) -> auth_pb2.SendVerificationEmailResponse:
        sent = await self._accounts.send_verification(context.current())
        return auth_pb2.SendVerificationEmailResponse(sent=sent)

    async def ChangeEmail(self, request, ctx) -> auth_pb2.ChangeEmailResponse:
        pending = await self._accounts.change_email(context.current(), new_email=request.new_email,
                                                    current_password=request.current_password)
        return auth_pb2.ChangeEmailResponse(pending_email=pending)

    async def ChangePassword(self, request, ctx) -> auth_pb2.ChangePasswordResponse:
        count = await self._accounts.change_password(
            context.current(), current_password=request.current_password,
            new_password=request.new_password)
        return auth_pb2.ChangePasswordResponse(revoked_sessions=count)

    async def RequestPasswordReset(self, request, ctx) -> auth_pb2.RequestPasswordResetResponse:
        await self._accounts.request_password_reset(email=request.email,
                                                    client_ip=context.request_info().client_ip)
        return auth_pb2.RequestPasswordResetResponse()

    async def ResetPassword(self, request, ctx) -> auth_pb2.ResetPasswordResponse:
        count = await self._accounts.reset_password(token=request.token,
                                                    new_password=request.new_password,
                                                    client_ip=context.request_info().client_ip)
        return auth_pb2.ResetPasswordResponse(revoked_sessions=count)

    async def ListSessions(self, request, ctx) -> auth_pb2.ListSessionsResponse:
        caller = context.current()
        sessions = await self._sign_in.sessions(caller)
        return auth_pb2.ListSessionsResponse(
            sessions=[_session(session, caller.session_id) for session in sessions])

    async def DeleteSession(self, request, ctx) -> auth_pb2.DeleteSessionResponse:
        await self._sign_in.end_session(context.current(), request.session_id)
        return auth_pb2.DeleteSessionResponse()

    async def DeleteOtherSessions(self, request, ctx) -> auth_pb2.DeleteOtherSessionsResponse:
        count = await self._sign_in.end_other_sessions(context.current())
        return auth_pb2.DeleteOtherSessionsResponse(revoked_sessions=count)


class AuthAdminServicer(auth_pb2_grpc.AuthAdminServiceServicer):
    def __init__(self, accounts: Accounts, memberships: Memberships,
                 security_log: SecurityLog, revocation_log: RevocationLog) -> None:
        self._accounts = accounts
        self._memberships = memberships
        self._security_log = security_log
        self._revocation_log = revocation_log

    async def ClaimAccount(self, request, ctx) -> auth_pb2.ClaimAccountResponse:
        user, created, took_over = await self._accounts.claim(
            email=request.email, full_name=request.full_name, password=request.password,
            client_ip=request.client_ip)
        return auth_pb2.ClaimAccountResponse(user=_user(user), created=created,
                                             took_over=took_over)

    async def FindUserByEmail(self, request, ctx) -> auth_pb2.FindUserByEmailResponse:
        user = await self._accounts.find_by_email(request.email)
        return auth_pb2.FindUserByEmailResponse(user=_user(user) if user is not None else None)

    async def BatchGetUsers(self, request, ctx) -> auth_pb2.BatchGetUsersResponse:
        users = await self._accounts.batch_get(list(request.user_ids))
        return auth_pb2.BatchGetUsersResponse(users=[_user(user) for user in users])

    async def GrantMembership(self, request, ctx) -> auth_pb2.GrantMembershipResponse:
        membership, previous_role, revoked = await self._memberships.grant_membership(
            user_id=request.user_id, restaurant_id=request.restaurant_id,
            restaurant_name=request.restaurant_name, role=request.role)
        return auth_pb2.GrantMembershipResponse(membership=_membership(membership),
                                                previous_role=previous_role,
                                                revoked_sessions=revoked)

    async def CreateFloorAccount(self, request, ctx) -> auth_pb2.CreateFloorAccountResponse:
        user, created = await self._memberships.create_floor_account(
            user_id=request.user_id, full_name=request.full_name,
            restaurant_id=request.restaurant_id, restaurant_name=request.restaurant_name,
            role=request.role)
        return auth_pb2.CreateFloorAccountResponse(user=_user(user), created=created)

    async def RevokeMembership(self, request, ctx) -> auth_pb2.RevokeMembershipResponse:
        count = await self._memberships.revoke_membership(user_id=request.user_id,
                                                          restaurant_id=request.restaurant_id)
        return auth_pb2.RevokeMembershipResponse(revoked_sessions=count)

    async def RevokeUserSessions(self, request, ctx) -> auth_pb2.RevokeUserSessionsResponse:
        count = await self._memberships.revoke_user_sessions(user_id=request.user_id,
                                                             restaurant_id=request.restaurant_id,
                                                             reason=request.reason)
        return auth_pb2.RevokeUserSessionsResponse(revoked_sessions=count)

    async def RecordSecurityEvent(self, request, ctx) -> auth_pb2.RecordSecurityEventResponse:
        await self._security_log.record_security_event(
            type=request.type, severity=request.severity, ip=request.ip, user_id=request.user_id,
            restaurant_id=request.restaurant_id, details_json=request.details_json,
            source=request.source)
        return auth_pb2.RecordSecurityEventResponse()

    async def ListRevokedSessions(self, request, ctx) -> auth_pb2.ListRevokedSessionsResponse:
        page = await self._revocation_log.page(
            since=(request.since.ToDatetime(tzinfo=timezone.utc)
                   if request.HasField("since") else None),
            page_size=request.page_size, page_token=request.page_token)
        response = auth_pb2.ListRevokedSessionsResponse(next_page_token=page.next_page_token)
        response.read_time.FromDatetime(page.read_time)
        for revocation in page.revocations:
            item = response.revoked_sessions.add(
                session_id=revocation.session_id, user_id=revocation.user_id,
                restaurant_id=revocation.restaurant_id, reason=revocation.reason)
            item.revoke_time.FromNanoseconds(int(revocation.revoked_at * 1e9))
        return response
