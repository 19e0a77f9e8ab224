"""gRPC <-> domain for AuthService and AuthAdminService. Nothing else lives here: the interceptor
has already authenticated the caller and turns raised ApiErrors into google.rpc.Status."""

from __future__ import annotations

from datetime import timezone

from google.api import httpbody_pb2
from google.protobuf import timestamp_pb2

from posmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from posmesh.common import context
from services.auth.domain import AuthDomain, ContextUser, TokenPair
from services.auth.revocation_log import RevocationLog
from services.auth.store import MembershipRecord, UserRecord


def _user(user: UserRecord) -> auth_pb2.User:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(user.created_at)
    return auth_pb2.User(id=user.id, email=user.email, full_name=user.full_name,
                         create_time=created)


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


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, domain: AuthDomain) -> None:
        self._domain = domain

    async def Register(self, request, ctx) -> auth_pb2.RegisterResponse:
        user = await self._domain.register(email=request.email, password=request.password,
                                           full_name=request.full_name)
        return auth_pb2.RegisterResponse(user=_user(user))

    async def Login(self, request, ctx) -> auth_pb2.LoginResponse:
        pair = await self._domain.login(email=request.email, password=request.password,
                                        restaurant_id=request.restaurant_id,
                                        client_ip=context.request_info().client_ip)
        return auth_pb2.LoginResponse(**_pair_fields(pair))

    async def RefreshToken(self, request, ctx) -> auth_pb2.RefreshTokenResponse:
        pair = await self._domain.refresh(refresh_token=request.refresh_token,
                                          client_ip=context.request_info().client_ip)
        return auth_pb2.RefreshTokenResponse(**_pair_fields(pair))

    async def Logout(self, request, ctx) -> auth_pb2.LogoutResponse:
        count = await self._domain.logout(context.current(), all_sessions=request.all_sessions)
        return auth_pb2.LogoutResponse(revoked_sessions=count)

    async def VerifyToken(self, request, ctx) -> auth_pb2.VerifyTokenResponse:
        result = await self._domain.verify(request.token or context.request_info().bearer_token)
        response = auth_pb2.VerifyTokenResponse(valid=result.valid, reason=result.reason)
        if result.claims is not None:
            c = result.claims
            response.claims.CopyFrom(auth_pb2.TokenClaims(
                iss=c.iss, aud=c.aud, sub=c.sub, sid=c.sid, restaurant_id=c.restaurant_id,
                role=c.role, jti=c.jti, iat=c.iat, exp=c.exp))
        if result.user is not None:
            response.user.CopyFrom(_context_user(result.user))
        return response

    async def GetMe(self, request, ctx) -> auth_pb2.GetMeResponse:
        me = await self._domain.me(context.current())
        return auth_pb2.GetMeResponse(user=_user(me.user),
                                      memberships=[_membership(m) for m in me.memberships],
                                      restaurant_id=me.restaurant_id, role=me.role,
                                      session_id=me.session_id)

    async def SwitchRestaurant(self, request, ctx) -> auth_pb2.SwitchRestaurantResponse:
        pair = await self._domain.switch_restaurant(
            context.current(), restaurant_id=request.restaurant_id,
            client_ip=context.request_info().client_ip)
        return auth_pb2.SwitchRestaurantResponse(**_pair_fields(pair))

    async def GetJwks(self, request, ctx) -> httpbody_pb2.HttpBody:
        return httpbody_pb2.HttpBody(content_type="application/json",
                                     data=self._domain.jwks_json())


class AuthAdminServicer(auth_pb2_grpc.AuthAdminServiceServicer):
    def __init__(self, domain: AuthDomain, revocation_log: RevocationLog) -> None:
        self._domain = domain
        self._revocation_log = revocation_log

    async def EnsureUser(self, request, ctx) -> auth_pb2.EnsureUserResponse:
        user, created = await self._domain.ensure_user(email=request.email,
                                                       full_name=request.full_name,
                                                       password=request.password)
        return auth_pb2.EnsureUserResponse(user=_user(user), created=created)

    async def BatchGetUsers(self, request, ctx) -> auth_pb2.BatchGetUsersResponse:
        users = await self._domain.batch_get_users(list(request.user_ids))
        return auth_pb2.BatchGetUsersResponse(users=[_user(user) for user in users])

    async def GrantMembership(self, request, ctx) -> auth_pb2.GrantMembershipResponse:
        membership, previous_role, revoked = await self._domain.grant_membership(
            user_id=request.user_id, restaurant_id=request.restaurant_id,
            restaurant_name=request.restaurant_name, role=request.role)
        return auth_pb2.GrantMembershipResponse(membership=_membership(membership),
                                                previous_role=previous_role,
                                                revoked_sessions=revoked)

    async def RevokeMembership(self, request, ctx) -> auth_pb2.RevokeMembershipResponse:
        count = await self._domain.revoke_membership(user_id=request.user_id,
                                                     restaurant_id=request.restaurant_id)
        return auth_pb2.RevokeMembershipResponse(revoked_sessions=count)

    async def RevokeUserSessions(self, request, ctx) -> auth_pb2.RevokeUserSessionsResponse:
        count = await self._domain.revoke_user_sessions(user_id=request.user_id,
                                                        restaurant_id=request.restaurant_id,
                                                        reason=request.reason)
        return auth_pb2.RevokeUserSessionsResponse(revoked_sessions=count)

    async def RecordSecurityEvent(self, request, ctx) -> auth_pb2.RecordSecurityEventResponse:
        await self._domain.record_security_event(
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
