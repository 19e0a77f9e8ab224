"""Manager approvals (manager override): a short-lived JWT the auth service signs when a manager
approves one action on a till with their PIN (DeviceService.ApproveAction), and that the service
doing the action verifies locally against the same keys as access tokens.

It is not an access token: its audience is `<JWT_AUDIENCE>/approval` and its `typ` header
`approval+jwt`, so it can never be passed off as one (nor an access token as an approval). It
names the action, the resource, the approver, the restaurant, the device and the staff session it
was given to; the verifying service checks each against the request and spends its `jti` once.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt

from posmesh.common.errors import PermissionDenied
from posmesh.common.tokens import ALLOWED_ALGORITHMS, MAX_TOKEN_BYTES, KeySet

TYPE = "approval+jwt"
AUDIENCE_SUFFIX = "/approval"
CLAIMS = ("iss", "aud", "jti", "iat", "exp", "action", "resource_id", "approver", "restaurant_id",
          "device_id", "sid")


def audience(jwt_audience: str) -> str:
    return jwt_audience + AUDIENCE_SUFFIX


@dataclass(frozen=True, slots=True)
class Approval:
    jti: str
    action: str
    resource_id: str
    approver: str  # the approving manager's user id
    restaurant_id: str
    device_id: str
    sid: str  # the staff session it was given to
    exp: int


def approval_invalid(message: str) -> PermissionDenied:
    return PermissionDenied("APPROVAL_INVALID", message)


def manager_approval_required(action: str) -> PermissionDenied:
    return PermissionDenied(
        "MANAGER_APPROVAL_REQUIRED",
        f"this needs an owner or manager: a manager can approve it on this till with their PIN "
        f"(POST /api/v1/devices:approveAction, action {action})", action=action)


def verify(keys: KeySet, token: str, *, issuer: str, jwt_audience: str,
           leeway_seconds: int = 0) -> Approval:
    """The approval's claims, or APPROVAL_INVALID; CPU only."""
    if not token or len(token) > MAX_TOKEN_BYTES:
        raise approval_invalid("the approval is missing or too long")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise approval_invalid("the approval is not a well-formed token") from None
    key = keys.get(header.get("kid") or "")
    if (header.get("typ") != TYPE or header.get("alg") not in ALLOWED_ALGORITHMS or key is None
            or key.algorithm != header.get("alg")):
        raise approval_invalid("the approval was not signed by the auth service")
    try:
        payload = jwt.decode(token, key=key.key, algorithms=[key.algorithm],
                             audience=audience(jwt_audience), issuer=issuer,
                             leeway=leeway_seconds, options={"require": list(CLAIMS)})
    except jwt.ExpiredSignatureError:
        raise approval_invalid("the approval has expired; ask the manager again") from None
    except jwt.PyJWTError:
        raise approval_invalid("the approval is not valid") from None
    try:
        return Approval(str(payload["jti"]), str(payload["action"]), str(payload["resource_id"]),
                        str(payload["approver"]), str(payload["restaurant_id"]),
                        str(payload["device_id"]), str(payload["sid"]), int(payload["exp"]))
    except (TypeError, ValueError):
        raise approval_invalid("the approval's claims are malformed") from None
