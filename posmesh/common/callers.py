"""The caller table: which identities in the mesh may call each RPC. Beside the permission table
(posmesh/common/permissions.py, who among users may call it), this says which *process* may.

A caller is named by the SPIFFE id in its mesh certificate (posmesh/common/mesh_tls.py), checked
by the shared interceptor on every call: any other caller gets PERMISSION_DENIED with reason
CALLER_FORBIDDEN naming it and the RPC, and a security event. The README prints this table
(`matrix_markdown`; a test keeps it in step).
"""

from __future__ import annotations

from posmesh.common import permissions
from posmesh.common.mesh_tls import EDGE, SERVICES

AUTH, STAFF, ORDERS, REALTIME = SERVICES
EVERY_SERVICE = frozenset(SERVICES)
MESH = EVERY_SERVICE | {EDGE}
FROM_EDGE = frozenset({EDGE})

_AUTH = "/posmesh.auth.v1.AuthService/"
_AUTH_ADMIN = "/posmesh.auth.v1.AuthAdminService/"

# Every row that is not "from the edge only" (what every public RPC is).
_ROWS: dict[str, frozenset[str]] = {
    # Probes: the edge's health checks and each service's aggregated health.
    "/grpc.health.v1.Health/Check": MESH,
    "/grpc.health.v1.Health/Watch": MESH,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": MESH,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": MESH,
    "/posmesh.health.v1.SystemHealthService/GetSystemHealth": MESH,
    # Every service verifies tokens against auth's keys.
    _AUTH + "GetJwks": MESH,
    # orders reads a restaurant's currency and time zone with its caller's token.
    "/posmesh.staff.v1.StaffService/GetRestaurant": frozenset({EDGE, ORDERS}),
    # Accounts and memberships are changed by staff only.
    _AUTH_ADMIN + "ClaimAccount": frozenset({STAFF}),
    _AUTH_ADMIN + "FindUserByEmail": frozenset({STAFF}),
    _AUTH_ADMIN + "BatchGetUsers": frozenset({STAFF}),
    _AUTH_ADMIN + "GrantMembership": frozenset({STAFF}),
    _AUTH_ADMIN + "RevokeMembership": frozenset({STAFF}),
    _AUTH_ADMIN + "RevokeUserSessions": frozenset({STAFF}),
    # Every service records security events and loads revocations (auth does both in-process).
    _AUTH_ADMIN + "RecordSecurityEvent": EVERY_SERVICE,
    _AUTH_ADMIN + "ListRevokedSessions": EVERY_SERVICE - {AUTH},
    # The realtime service's one stream per restaurant.
    "/posmesh.orders.v1.OrderFeedService/WatchRestaurantOrders": frozenset({REALTIME}),
}

_missing = [method for method, rule in permissions.PERMISSIONS.items()
            if rule.access is permissions.Access.INTERNAL and method not in _ROWS]
if _missing:
    raise RuntimeError(f"internal RPCs without a row in the caller table: {_missing}")

CALLERS: dict[str, frozenset[str]] = {
    method: _ROWS.get(method, FROM_EDGE) for method in permissions.PERMISSIONS}
# Not gRPC, checked by the realtime service itself (services/realtime/main.py).
WEBSOCKET = "realtime WebSocket (/ws/...)"


def may_call(caller: str | None, method: str) -> bool:
    """Whether the identity `caller` ('staff', 'edge'; None: unidentified) may call `method`."""
    return caller is not None and caller in CALLERS.get(method, frozenset())


def matrix_markdown() -> str:
    """The table as the README prints it."""
    columns = [EDGE, *SERVICES]
    lines = ["| RPC | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    rows = [(permissions.permission_name(method), allowed) for method, allowed in CALLERS.items()
            if method.startswith("/posmesh.")]
    rows.append((WEBSOCKET, FROM_EDGE))
    for name, allowed in rows:
        shown = f"`{name}`" if "/" not in name else name
        lines.append(f"| {shown} | " + " | ".join("yes" if c in allowed else "—" for c in columns)
                     + " |")
    return "\n".join(lines)
