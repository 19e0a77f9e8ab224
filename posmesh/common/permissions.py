"""The permission table: who may call each RPC. The only place access is decided.

Every RPC a service serves must have a row here; an RPC without one is refused (default deny).
Domain rules that depend on the data (a manager may not touch an owner's record) live in the
domain and raise the same ROLE_FORBIDDEN reason.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from posmesh.common.admission import Priority

OWNER, MANAGER, STAFF = "owner", "manager", "staff"
ROLES = (OWNER, MANAGER, STAFF)
EVERY_ROLE = frozenset(ROLES)
MANAGERS = frozenset({OWNER, MANAGER})


class Access(Enum):
    PUBLIC = "public"  # no token needed
    SIGNED_IN = "signed-in"  # any valid token; no restaurant context needed
    RESTAURANT = "restaurant"  # a token with a restaurant context and one of `roles`
    INTERNAL = "internal"  # service-to-service only; refused when it arrives through the edge


@dataclass(frozen=True)
class Rule:
    access: Access
    roles: frozenset[str] = frozenset()
    # Whether a `restaurant_id` in the request (path, body, X-Restaurant-Id) must equal the token's.
    tenant_checked: bool = True
    # What the domain adds on top of the row (shown in the README's matrix).
    note: str = ""
    # PUBLIC rows only: a valid token, when one is sent, makes the caller known to the servicer
    # (which may then answer in more detail); an invalid one is ignored, never refused.
    identifies_caller: bool = False
    # The per-client-address budget the edge spends on each call ("" for none): one of
    # EDGE_BUDGETS. A call that costs a password hash or a mail is limited before it arrives.
    edge_budget: str = ""
    # Under load (posmesh/common/admission.py and the edge's circuit breakers): shed first,
    # normally, or last. None: infrastructure (health probes, reflection), never refused.
    # Set from SHED_LAST and SHED_FIRST below, not per row.
    priority: Priority | None = Priority.NORMAL

    @property
    def permission(self) -> str:
        return self.access.value if self.access is not Access.RESTAURANT else "+".join(
            role for role in ROLES if role in self.roles)


# Per-client-address budgets of the edge (settings EDGE_<NAME>_RATE_LIMIT_PER_MINUTE).
LOGIN_BUDGET, SIGNUP_BUDGET, HEALTH_BUDGET = "login", "signup", "health"
EDGE_BUDGETS = (LOGIN_BUDGET, SIGNUP_BUDGET, HEALTH_BUDGET)

PUBLIC = Rule(Access.PUBLIC, tenant_checked=False)
SIGNED_IN = Rule(Access.SIGNED_IN)
INTERNAL = Rule(Access.INTERNAL, tenant_checked=False)


def restaurant(*roles: str, note: str = "") -> Rule:
    return Rule(Access.RESTAURANT, frozenset(roles), note=note)


_AUTH = "/posmesh.auth.v1.AuthService/"
_AUTH_ADMIN = "/posmesh.auth.v1.AuthAdminService/"
_STAFF = "/posmesh.staff.v1.StaffService/"
_MENU = "/posmesh.orders.v1.MenuService/"
_ORDERS = "/posmesh.orders.v1.OrderService/"
_REALTIME = "/posmesh.realtime.v1.RealtimeService/"

PERMISSIONS: dict[str, Rule] = {
    # Infrastructure.
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": PUBLIC,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": PUBLIC,
    "/posmesh.health.v1.SystemHealthService/GetSystemHealth": Rule(
        Access.PUBLIC, tenant_checked=False, identifies_caller=True, edge_budget=HEALTH_BUDGET,
        note="no token needed: status only; details for owners and managers"),
    # Auth.
    _AUTH + "Register": Rule(Access.PUBLIC, tenant_checked=False, edge_budget=SIGNUP_BUDGET),
    _AUTH + "Login": Rule(Access.PUBLIC, tenant_checked=False, edge_budget=LOGIN_BUDGET),
    _AUTH + "RefreshToken": PUBLIC,
    _AUTH + "VerifyToken": PUBLIC,  # introspection answers valid=false itself
    _AUTH + "GetJwks": PUBLIC,
    _AUTH + "VerifyEmail": Rule(Access.PUBLIC, tenant_checked=False, edge_budget=SIGNUP_BUDGET,
                                note="with the single-use token from the mail"),
    _AUTH + "RequestPasswordReset": Rule(Access.PUBLIC, tenant_checked=False,
                                         edge_budget=SIGNUP_BUDGET,
                                         note="the same answer whether the address has an account"),
    _AUTH + "ResetPassword": Rule(Access.PUBLIC, tenant_checked=False, edge_budget=SIGNUP_BUDGET,
                                  note="with the single-use token from the mail; ends every session"),
    _AUTH + "Logout": SIGNED_IN,
    _AUTH + "GetMe": SIGNED_IN,
    _AUTH + "SendVerificationEmail": SIGNED_IN,
    _AUTH + "ChangeEmail": Rule(Access.SIGNED_IN, note="current password required"),
    _AUTH + "ChangePassword": Rule(Access.SIGNED_IN,
                                   note="current password required; ends the caller's other sessions"),
    _AUTH + "ListSessions": Rule(Access.SIGNED_IN, note="the caller's own sessions"),
    _AUTH + "DeleteSession": Rule(Access.SIGNED_IN, note="the caller's own sessions"),
    _AUTH + "DeleteOtherSessions": Rule(Access.SIGNED_IN, note="the caller's own sessions"),
    # The target restaurant is the point of the call, so it is not tenant-checked.
    _AUTH + "SwitchRestaurant": Rule(Access.SIGNED_IN, tenant_checked=False,
                                     note="to a restaurant the caller belongs to"),
    _AUTH_ADMIN + "ClaimAccount": INTERNAL,
    _AUTH_ADMIN + "FindUserByEmail": INTERNAL,
    _AUTH_ADMIN + "BatchGetUsers": INTERNAL,
    _AUTH_ADMIN + "GrantMembership": INTERNAL,
    _AUTH_ADMIN + "RevokeMembership": INTERNAL,
    _AUTH_ADMIN + "RevokeUserSessions": INTERNAL,
    _AUTH_ADMIN + "RecordSecurityEvent": INTERNAL,
    _AUTH_ADMIN + "ListRevokedSessions": INTERNAL,
    # Staff: restaurants the caller belongs to (membership is checked in the domain).
    _STAFF + "CreateRestaurant": Rule(Access.SIGNED_IN, note="the caller becomes its owner"),
    _STAFF + "ListRestaurants": Rule(Access.SIGNED_IN, note="the caller's restaurants only"),
    _STAFF + "GetRestaurant": Rule(Access.SIGNED_IN, tenant_checked=False,
                                   note="a restaurant the caller belongs to; else 404"),
    _STAFF + "UpdateRestaurant": restaurant(OWNER),
    # Staff: employees of the token's restaurant. Managers manage staff-role employees only.
    _STAFF + "ListEmployees": restaurant(*EVERY_ROLE, note="staff see the directory only (no contact details or pay)"),
    _STAFF + "GetEmployee": restaurant(*EVERY_ROLE, note="staff: directory fields, full record for themselves"),
    _STAFF + "CreateEmployee": restaurant(*MANAGERS, note="managers: staff-role employees only"),
    _STAFF + "UpdateEmployee": restaurant(*MANAGERS, note="managers: staff-role employees only, never themselves"),
    _STAFF + "DeleteEmployee": restaurant(*MANAGERS, note="managers: staff-role employees only; never the last owner"),
    _STAFF + "UndeleteEmployee": restaurant(*MANAGERS, note="managers: staff-role employees only"),
    # Invitations: managed by owners and managers; accepted by the invited person.
    _STAFF + "ListInvitations": restaurant(*MANAGERS),
    _STAFF + "ResendInvitation": restaurant(*MANAGERS, note="managers: staff-role invitations only"),
    _STAFF + "RevokeInvitation": restaurant(*MANAGERS, note="managers: staff-role invitations only"),
    _STAFF + "ListMyInvitations": Rule(Access.SIGNED_IN,
                                       note="invitations for the caller's verified address"),
    _STAFF + "AcceptInvitation": Rule(
        Access.PUBLIC, tenant_checked=False, identifies_caller=True, edge_budget=SIGNUP_BUDGET,
        note="signed in as a verified account with the invited address, or with the mailed "
             "token and a password of one's own"),
    # Menu.
    _MENU + "GetMenu": restaurant(*EVERY_ROLE),
    _MENU + "CreateMenuCategory": restaurant(*MANAGERS),
    _MENU + "UpdateMenuCategory": restaurant(*MANAGERS),
    _MENU + "DeleteMenuCategory": restaurant(*MANAGERS),
    _MENU + "CreateMenuItem": restaurant(*MANAGERS),
    _MENU + "UpdateMenuItem": restaurant(*MANAGERS),
    _MENU + "DeleteMenuItem": restaurant(*MANAGERS),
    # Orders: everyone on the floor takes and moves orders.
    _ORDERS + "CreateOrder": restaurant(*EVERY_ROLE),
    _ORDERS + "ListOrders": restaurant(*EVERY_ROLE),
    _ORDERS + "ListActiveOrders": restaurant(*EVERY_ROLE),
    _ORDERS + "GetOrder": restaurant(*EVERY_ROLE),
    _ORDERS + "UpdateOrderStatus": restaurant(*EVERY_ROLE),
    _ORDERS + "AddOrderItems": restaurant(*EVERY_ROLE),
    _ORDERS + "RemoveOrderItem": restaurant(*EVERY_ROLE),
    _ORDERS + "WatchOrders": restaurant(*EVERY_ROLE),
    # The realtime service's one stream per restaurant; callers are services, not users.
    "/posmesh.orders.v1.OrderFeedService/WatchRestaurantOrders": INTERNAL,
    # Realtime.
    _REALTIME + "GetPresence": restaurant(*MANAGERS),
}


# Shed last: what a restaurant cannot trade without in a rush — taking and changing orders, the
# event flow to kitchen screens, and signing in (a read storm must not lock staff out).
SHED_LAST = frozenset({
    _ORDERS + "CreateOrder", _ORDERS + "UpdateOrderStatus", _ORDERS + "AddOrderItems",
    _ORDERS + "RemoveOrderItem", _ORDERS + "WatchOrders",
    "/posmesh.orders.v1.OrderFeedService/WatchRestaurantOrders",
    _AUTH + "Login", _AUTH + "RefreshToken", _AUTH + "SwitchRestaurant", _AUTH + "VerifyToken",
})
# Shed first: reads and lists, which an app repeats on its next refresh anyway.
SHED_FIRST = frozenset({
    _ORDERS + "ListOrders", _ORDERS + "ListActiveOrders", _ORDERS + "GetOrder",
    _MENU + "GetMenu", _STAFF + "ListRestaurants", _STAFF + "GetRestaurant",
    _STAFF + "ListEmployees", _STAFF + "GetEmployee", _STAFF + "ListInvitations",
    _STAFF + "ListMyInvitations", _AUTH + "GetMe", _AUTH + "ListSessions",
    _REALTIME + "GetPresence", "/posmesh.health.v1.SystemHealthService/GetSystemHealth",
})
# Never shed: health checks, and the signing keys, which the edge refetches when its cache expires
# while every signed-in request of a burst waits on them (one refused fetch is a wave of 401s).
NEVER_SHED = frozenset(method for method in PERMISSIONS if not method.startswith("/posmesh.")) | {
    _AUTH + "GetJwks"}
PERMISSIONS = {
    method: replace(rule, priority=None if method in NEVER_SHED else
                    Priority.CRITICAL if method in SHED_LAST else
                    Priority.SHEDDABLE if method in SHED_FIRST else Priority.NORMAL)
    for method, rule in PERMISSIONS.items()}


def rule_for(method: str) -> Rule | None:
    return PERMISSIONS.get(method)


def permission_name(method: str) -> str:
    """'orders.CreateOrder' for '/posmesh.orders.v1.OrderService/CreateOrder'."""
    service, _, rpc = method.strip("/").partition("/")
    package = service.split(".")[1] if service.startswith("posmesh.") else service
    return f"{package}.{rpc}"


def matrix_markdown() -> str:
    """The table as the README prints it (a test keeps the README in step)."""
    lines = ["| RPC | owner | manager | staff | under load | notes |", "|---|---|---|---|---|---|"]
    load = {Priority.CRITICAL: "shed last", Priority.SHEDDABLE: "shed first",
            Priority.NORMAL: "normal", None: "never shed"}
    for method, rule in PERMISSIONS.items():
        if not method.startswith("/posmesh."):
            continue
        if rule.access is Access.RESTAURANT:
            cells = ["yes" if role in rule.roles else "—" for role in ROLES]
            note = rule.note or "own restaurant only"
        else:
            cells = [rule.access.value] * 3
            note = rule.note or {Access.PUBLIC: "no token needed", Access.SIGNED_IN: "any signed-in user",
                    Access.INTERNAL: "service-to-service; not routed by the edge"}[rule.access]
        lines.append(f"| `{permission_name(method)}` | " + " | ".join(cells)
                     + f" | {load[rule.priority]} | {note} |")
    return "\n".join(lines)
