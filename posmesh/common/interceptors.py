"""The one gRPC server interceptor every service runs: it authenticates the caller, checks the
tenant and the permission table, exposes the caller to the servicer, and turns every error into a
google.rpc.Status with an ErrorInfo reason. Unexpected exceptions become INTERNAL and are logged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from posmesh.common import callers, context, mesh_tls, metrics, permissions, security_events
from posmesh.common.admission import REQUEST_START_HEADER, Admission, deadline_exceeded, queued_seconds
from posmesh.common.authn import Authenticator
from posmesh.common.database_errors import database_error
from posmesh.common.errors import (
    ERROR_DOMAIN,
    ApiError,
    Internal,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from posmesh.common.tokens import token_invalid

log = logging.getLogger(__name__)

# Headers Envoy adds to every request it forwards; their presence means "came through the edge".
_EDGE_HEADERS = ("x-envoy-external-address", "x-forwarded-for", "x-envoy-original-path")


def server_interceptors(authenticator: Authenticator,
                        admission: Admission | None = None) -> list[grpc.aio.ServerInterceptor]:
    """`admission`: the process's admission control and deadlines (posmesh/common/admission.py);
    None only in tests of the interceptor's other duties."""
    return [AuthorizationInterceptor(authenticator, admission)]


def to_status(error: ApiError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN,
                                       metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    return rpc_status.to_status(
        status_pb2.Status(code=error.code.value[0], message=error.message, details=[detail]))


async def abort(ctx: grpc.aio.ServicerContext, error: ApiError) -> None:
    metrics.count_error(error.code.name, error.reason)
    status = to_status(error)
    trailing = status.trailing_metadata
    if "retry_after_seconds" in error.metadata:
        # The edge passes it to HTTP clients as the standard header.
        trailing = (*trailing, ("retry-after", str(error.metadata["retry_after_seconds"])))
    await ctx.abort(status.code, status.details, trailing)


def infrastructure_error(exc: BaseException) -> ApiError | None:
    """A failing database or Redis is a retryable UNAVAILABLE, never an opaque INTERNAL."""
    import redis.exceptions

    if (error := database_error(exc)) is not None:
        return error
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return Unavailable("REDIS_UNAVAILABLE", "the cache is unavailable; retry shortly",
                           retryable="true")
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return Unavailable("DEPENDENCY_UNAVAILABLE", "a dependency is unavailable; retry shortly",
                           retryable="true")
    return None


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    return {key: value for key, value in (details.invocation_metadata or ())
            if isinstance(value, str)}


def _client_ip(metadata: dict[str, str], ctx: grpc.aio.ServicerContext) -> str:
    # Envoy (use_remote_address) sets x-envoy-external-address; the rightmost XFF entry is the
    # one Envoy appended itself. The leftmost is whatever the client claimed and is never trusted.
    if ip := metadata.get("x-envoy-external-address"):
        return ip
    if xff := metadata.get("x-forwarded-for"):
        return xff.split(",")[-1].strip()
    peer = ctx.peer() or ""
    return peer.rsplit(":", 1)[0].removeprefix("ipv4:").removeprefix("ipv6:") if peer else ""


def _bearer(metadata: dict[str, str]) -> str:
    value = metadata.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _requested_restaurants(request: Any, metadata: dict[str, str]) -> list[tuple[str, str]]:
    """(where, restaurant id) pairs the request names: header, top-level field, nested message."""
    found = []
    if header := metadata.get("x-restaurant-id", "").strip():
        found.append(("X-Restaurant-Id header", header))
    descriptor = getattr(request, "DESCRIPTOR", None)
    if descriptor is None:
        return found
    for field in descriptor.fields:
        if field.name == "restaurant_id" and getattr(request, field.name):
            found.append(("request", getattr(request, field.name)))
        elif (field.message_type is not None and not field.is_repeated
              and request.HasField(field.name)):
            nested = getattr(request, field.name)
            if "restaurant_id" in nested.DESCRIPTOR.fields_by_name and nested.restaurant_id:
                found.append((f"request {field.name}", nested.restaurant_id))
    return found


class _Undecodable:
    """Stands in for a request grpc could not parse, so the caller gets INVALID_ARGUMENT with a
    reason instead of grpc's bare INTERNAL "Exception deserializing request"."""


def _tolerant(deserializer: Callable | None) -> Callable | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception:  # DecodeError, invalid UTF-8 in a string field
            return _Undecodable()
    return deserialize


def _serialized_once(serializer: Callable | None) -> Callable | None:
    """A unary servicer may answer with the response already serialised (bytes): orders keeps
    each order as its wire document, so a read sends it on instead of parsing it into a message
    only to serialise it again."""
    if serializer is None:
        return None

    def serialize(response):
        return response if type(response) is bytes else serializer(response)
    return serialize


def _shown(value: str, limit: int = 64) -> str:
    """A client-supplied value as it may appear in an error message: bounded."""
    return value if len(value) <= limit else value[:limit] + "..."


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator, admission: Admission | None = None) -> None:
        self._authenticator = authenticator
        self._admission = admission

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        rule = permissions.rule_for(method)
        metadata = _metadata(details)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, rule, metadata),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=_serialized_once(handler.response_serializer))
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, rule, metadata),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        # Client- and bidi-streaming RPCs are only used by infrastructure (reflection).
        if rule is not None and rule.access is permissions.Access.PUBLIC:
            return handler
        return grpc.unary_unary_rpc_method_handler(self._refuse_unlisted(method))

    def _refuse_unlisted(self, method: str) -> Callable:
        async def refuse(request, ctx):
            await abort(ctx, PermissionDenied("ROLE_FORBIDDEN", f"{method} is not callable"))
        return refuse

    def _wrap_unary(self, behaviour, method, rule, metadata):
        admission = self._admission
        if admission is None or rule is None or rule.priority is None:
            admission = None  # infrastructure (health, reflection) is never refused or timed
        queued = queued_seconds(metadata.get(REQUEST_START_HEADER)) if admission else 0.0

        async def wrapped(request, ctx):
            lane = deadline = timeout = None
            try:
                if admission is not None:
                    lane = admission.admit(rule.priority, queued_seconds=queued)
                    budget = admission.budget(ctx.time_remaining())
                    deadline = admission.start_deadline(budget)
                    timeout = asyncio.timeout(budget)
                    async with timeout:
                        await self._admit(request, ctx, method, rule, metadata)
                        return await behaviour(request, ctx)
                await self._admit(request, ctx, method, rule, metadata)
                return await behaviour(request, ctx)
            except grpc.aio.AbortError:
                raise  # the servicer aborted the call itself
            except ApiError as error:
                await abort(ctx, error)
            except TimeoutError as exc:
                if timeout is not None and timeout.expired():
                    await abort(ctx, deadline_exceeded(budget))
                await abort(ctx, self._unexpected(method, exc))
            except asyncio.CancelledError:
                # gRPC cancels the handler when the caller has gone or its deadline passed:
                # nobody waits for an answer. A cancellation from anywhere else would leave the
                # caller waiting for nothing (gRPC sends no status): answer it.
                remaining = ctx.time_remaining()
                if ctx.cancelled() or (remaining is not None and remaining <= 0):
                    raise
                await abort(ctx, Unavailable("SERVICE_UNAVAILABLE",
                                             "the service abandoned the request; retry",
                                             retryable="true"))
            except Exception as exc:
                await abort(ctx, self._unexpected(method, exc))
            finally:
                if lane is not None:
                    admission.release(lane)
                if deadline is not None:
                    admission.end_deadline(deadline)
        return wrapped

    def _wrap_stream(self, behaviour, method, rule, metadata):
        async def wrapped(request, ctx):
            try:
                await self._admit(request, ctx, method, rule, metadata)
                async for response in behaviour(request, ctx):
                    yield response
            except grpc.aio.AbortError:
                raise  # the servicer aborted the call itself
            except ApiError as error:
                await abort(ctx, error)
            except Exception as exc:
                await abort(ctx, self._unexpected(method, exc))
        return wrapped

    @staticmethod
    def _unexpected(method: str, exc: Exception) -> ApiError:
        if (translated := infrastructure_error(exc)) is not None:
            log.warning("%s failed on a dependency: %r", method, exc)
            return translated
        log.exception("unhandled error in %s", method)
        return Internal("INTERNAL", "internal error; it has been logged")

    async def _admit(self, request, ctx, method: str, rule: permissions.Rule | None,
                     metadata: dict[str, str]) -> None:
        if isinstance(request, _Undecodable):
            raise InvalidArgument("INVALID_ENCODING",
                                  "the request could not be decoded: strings must be valid UTF-8")
        ip = _client_ip(metadata, ctx)
        token = _bearer(metadata)
        via_edge = any(header in metadata for header in _EDGE_HEADERS)
        context.set_request(context.RequestInfo(method=method, client_ip=ip, bearer_token=token,
                                                request_id=metadata.get("x-request-id", ""),
                                                via_edge=via_edge,
                                                user_agent=metadata.get("user-agent", "")))
        context.set_caller(None)
        _check_caller(ctx, method, ip)
        if rule is None:
            raise PermissionDenied("ROLE_FORBIDDEN", f"{method} has no entry in the permission table")
        if rule.access is permissions.Access.PUBLIC:
            if rule.identifies_caller and token:
                await self._identify(token, ip)
            return
        if rule.access is permissions.Access.INTERNAL:
            if via_edge:
                security_events.record("INTERNAL_RPC_FROM_EDGE", severity=security_events.CRITICAL,
                                       ip=ip, method=method)
                raise PermissionDenied("INTERNAL_ONLY", f"{method} is internal and not callable from outside")
            return
        if not token:
            raise token_invalid("this call needs an 'Authorization: Bearer <access token>' header")
        try:
            claims = await self._authenticator.authenticate(token)
        except Unauthenticated as error:
            if error.reason == "SESSION_REVOKED":
                security_events.record("REVOKED_SESSION_USE", ip=ip, method=method)
            raise
        context.set_caller(_caller_of(claims, ip))
        self._check_device(method, rule, claims, ip)
        if rule.tenant_checked:
            for where, requested in _requested_restaurants(request, metadata):
                if requested != claims.restaurant_id:
                    security_events.record("TENANT_MISMATCH", ip=ip, user_id=claims.sub,
                                           restaurant_id=claims.restaurant_id, method=method,
                                           requested_restaurant_id=requested)
                    if not claims.restaurant_id:
                        raise _no_context(method)
                    raise PermissionDenied(
                        "TENANT_MISMATCH",
                        f"the {where} names restaurant {_shown(requested)} but your token is for "
                        f"restaurant {claims.restaurant_id}; switch restaurant first",
                        token_restaurant_id=claims.restaurant_id,
                        requested_restaurant_id=_shown(requested))
        if rule.access is permissions.Access.RESTAURANT:
            if not claims.restaurant_id:
                raise _no_context(method)
            if claims.device_only:
                return  # its type was checked above
            if claims.role not in rule.roles:
                name = permissions.permission_name(method)
                security_events.record("ACCESS_DENIED", ip=ip, user_id=claims.sub,
                                       restaurant_id=claims.restaurant_id, permission=name,
                                       role=claims.role)
                raise PermissionDenied(
                    "ROLE_FORBIDDEN",
                    f"permission {name} needs role {' or '.join(sorted(rule.roles))}; "
                    f"your role in this restaurant is {claims.role or 'none'}",
                    permission=name, role=claims.role)


    @staticmethod
    def _check_device(method: str, rule: permissions.Rule, claims, ip: str) -> None:
        """A device's own token (no person) may call only what its type is listed for; a
        device-only RPC needs one."""
        name = permissions.permission_name(method)
        if rule.access is permissions.Access.DEVICE and not claims.device_only:
            raise PermissionDenied(
                "DEVICE_REQUIRED", f"permission {name} needs a paired device's own token "
                f"({', '.join(sorted(rule.devices))}), not a person's", permission=name)
        if claims.device_only and claims.device_type not in rule.devices:
            security_events.record("ACCESS_DENIED", ip=ip, restaurant_id=claims.restaurant_id,
                                   permission=name, device_id=claims.device_id,
                                   device_type=claims.device_type)
            raise PermissionDenied(
                "DEVICE_FORBIDDEN", f"a {claims.device_type or 'device'} may not call {name}"
                + ("; a person signs in on it with their PIN first" if claims.device_type in
                   permissions.PIN_PADS else ""),
                permission=name, device_type=claims.device_type)

    async def _identify(self, token: str, ip: str) -> None:
        """On a public RPC: the caller when the token is valid; anonymous otherwise."""
        try:
            claims = await self._authenticator.authenticate(token)
        except Unauthenticated:
            return
        context.set_caller(_caller_of(claims, ip))


def _check_caller(ctx: grpc.aio.ServicerContext, method: str, ip: str) -> None:
    """The caller table (posmesh/common/callers.py) against the peer's mesh certificate. A
    service with MESH_TLS on has no plaintext port, so every call it serves is checked; only a
    plaintext server (MESH_TLS=false, measurements) has no peer certificate to check."""
    auth = ctx.auth_context() or {}
    if b"ssl" not in auth.get("transport_security_type", ()):
        return
    spiffe = mesh_tls.peer_spiffe_id(ctx, auth)
    caller = mesh_tls.name_of(spiffe) if spiffe else None
    if callers.may_call(caller, method):
        return
    shown = caller or spiffe or "a caller without a mesh identity"
    security_events.record("CALLER_FORBIDDEN", severity=security_events.CRITICAL, ip=ip,
                           method=method, caller=shown)
    raise PermissionDenied("CALLER_FORBIDDEN", f"{shown} may not call {method}",
                           caller=shown, method=method)


def _caller_of(claims, ip: str) -> context.Caller:
    return context.Caller(user_id=claims.sub, session_id=claims.sid,
                          restaurant_id=claims.restaurant_id, role=claims.role,
                          token_id=claims.jti, expires_at=claims.exp, client_ip=ip,
                          device_id=claims.device_id, device_type=claims.device_type)


def _no_context(method: str) -> PermissionDenied:
    return PermissionDenied(
        "NO_RESTAURANT_CONTEXT",
        f"{permissions.permission_name(method)} needs a restaurant: your token has none; call "
        "POST /api/v1/auth/switch-restaurant with a restaurant you belong to",
        hint="POST /api/v1/auth/switch-restaurant")
