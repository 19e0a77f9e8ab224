"""The verified caller of the current RPC, set by the interceptor and read by servicers."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from posmesh.common.errors import Unauthenticated


@dataclass(frozen=True, slots=True)
class Caller:
    user_id: str
    session_id: str
    restaurant_id: str  # "" when the token has no restaurant context
    role: str  # "" when the token has no restaurant context
    token_id: str
    expires_at: int
    client_ip: str = ""
    device_id: str = ""  # the paired device the token belongs to, if any
    device_type: str = ""

    @property
    def device_only(self) -> bool:
        """A device's own token (no person): user_id is empty."""
        return not self.user_id and bool(self.device_id)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    method: str
    client_ip: str
    bearer_token: str  # the raw token, for introspection endpoints; "" when absent
    request_id: str = ""
    via_edge: bool = False  # arrived through the public edge (not from inside the mesh)
    user_agent: str = ""  # the client's User-Agent (what a session list shows)


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)
_request: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar("request", default=None)


def set_caller(caller: Caller | None) -> contextvars.Token:
    return _caller.set(caller)


def set_request(info: RequestInfo) -> contextvars.Token:
    return _request.set(info)


def current() -> Caller:
    """The authenticated caller; raises when the RPC was not authenticated."""
    caller = _caller.get()
    if caller is None:
        raise Unauthenticated("TOKEN_INVALID", "this call needs a valid Bearer access token")
    return caller


def current_or_none() -> Caller | None:
    return _caller.get()


def request_info() -> RequestInfo:
    info = _request.get()
    return info if info is not None else RequestInfo(method="", client_ip="", bearer_token="")
