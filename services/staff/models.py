"""Plain data of the staff service: what the store returns and the domain works with."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Generic, TypeVar

T = TypeVar("T")

# An employee's state, and the list filters (which add "inactive" = deactivated, and "all").
INVITED, ACTIVE, DEACTIVATED = "invited", "active", "deactivated"
INACTIVE, ALL = "inactive", "all"
EMPLOYEE_STATES = (ACTIVE, INVITED, INACTIVE, ALL)

# An invitation's state (derived from its times) and the list filters.
PENDING, ACCEPTED, REVOKED, EXPIRED = "pending", "accepted", "revoked", "expired"
INVITATION_STATES = (PENDING, ACCEPTED, REVOKED, EXPIRED, ALL)


@dataclass(frozen=True, slots=True)
class Address:
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    region: str | None = None
    postal_code: str | None = None
    country: str | None = None


@dataclass(frozen=True, slots=True)
class Restaurant:
    id: uuid.UUID
    name: str
    timezone: str
    currency: str
    address: Address
    version: int
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True, slots=True)
class MemberRestaurant:
    """A restaurant as one of its employees sees it: with their access role there."""

    restaurant: Restaurant
    role: str


@dataclass(frozen=True, slots=True)
class Employee:
    """An employee record. In a view for a caller, fields the caller may not see are None."""

    id: uuid.UUID
    restaurant_id: uuid.UUID
    user_id: uuid.UUID | None  # None until the invitation is accepted
    first_name: str
    last_name: str | None
    email: str | None
    phone: str | None
    access_role: str
    job_title: str | None
    hourly_rate_minor: int | None
    start_date: date | None
    active: bool
    version: int
    create_time: datetime
    update_time: datetime
    deactivate_time: datetime | None
    state: str = ACTIVE  # INVITED, ACTIVE or DEACTIVATED


@dataclass(frozen=True, slots=True)
class Invitation:
    id: uuid.UUID
    restaurant_id: uuid.UUID
    restaurant_name: str
    employee_id: uuid.UUID
    email: str
    access_role: str  # the employee's role now: what accepting grants
    create_time: datetime
    expire_time: datetime
    send_time: datetime
    send_count: int
    accept_time: datetime | None
    revoke_time: datetime | None

    def state_at(self, now: datetime) -> str:
        if self.accept_time is not None:
            return ACCEPTED
        if self.revoke_time is not None:
            return REVOKED
        return EXPIRED if now >= self.expire_time else PENDING


@dataclass(frozen=True, slots=True)
class NewInvitation:
    employee_id: uuid.UUID
    email: str
    token_digest: bytes
    invited_by: str
    expire_time: datetime


@dataclass(frozen=True, slots=True)
class NewRestaurant:
    name: str
    timezone: str
    currency: str
    address: Address


@dataclass(frozen=True, slots=True)
class NewEmployee:
    first_name: str
    last_name: str | None
    email: str | None  # None: works on tills with a PIN only (a floor account)
    phone: str | None
    access_role: str
    job_title: str | None
    hourly_rate_minor: int | None
    start_date: date | None


@dataclass(frozen=True, slots=True)
class EmployeeFilter:
    access_role: str | None  # None: every role
    state: str  # ACTIVE, INVITED, INACTIVE or ALL


@dataclass(frozen=True, slots=True)
class PageRequest:
    size: int
    after: tuple[datetime, uuid.UUID] | None  # keyset position: (create_time, id) of the last row


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class RestaurantDraft:
    """A restaurant as a client sent it: not yet validated."""

    name: str | None
    timezone: str | None
    currency: str | None
    address: Address | None


@dataclass(frozen=True, slots=True)
class EmployeeDraft:
    """An employee as a client sent it: not yet validated; None where a field was absent."""

    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    access_role: str | None = None
    job_title: str | None = None
    hourly_rate_minor: int | None = None
    start_date: str | None = None
