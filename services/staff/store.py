"""The staff schema's SQL (SQLAlchemy Core on asyncpg). Every employee query takes the restaurant
id, so no query can reach another restaurant's rows by employee id alone."""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, AsyncIterator

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from posmesh.common.mail import Mail, enqueue
from services.staff.models import (
    ACCEPTED,
    ACTIVE,
    DEACTIVATED,
    EXPIRED,
    INACTIVE,
    INVITED,
    PENDING,
    REVOKED,
    Address,
    Employee,
    EmployeeFilter,
    Invitation,
    MemberRestaurant,
    NewEmployee,
    NewInvitation,
    NewRestaurant,
    PageRequest,
    Restaurant,
)

SCHEMA = "staff"
metadata = sa.MetaData(schema=SCHEMA)

restaurants = sa.Table(
    "restaurants", metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("timezone", sa.Text, nullable=False),
    sa.Column("currency", sa.CHAR(3), nullable=False),
    sa.Column("address_line1", sa.Text),
    sa.Column("address_line2", sa.Text),
    sa.Column("address_city", sa.Text),
    sa.Column("address_region", sa.Text),
    sa.Column("address_postal_code", sa.Text),
    sa.Column("address_country", sa.CHAR(2)),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

employees = sa.Table(
    "employees", metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("restaurant_id", pg.UUID(as_uuid=True), sa.ForeignKey(restaurants.c.id), nullable=False),
    sa.Column("user_id", pg.UUID(as_uuid=True)),
    sa.Column("first_name", sa.Text, nullable=False),
    sa.Column("last_name", sa.Text),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("phone", sa.Text),
    sa.Column("access_role", sa.Text, nullable=False),
    sa.Column("job_title", sa.Text),
    sa.Column("hourly_rate_minor", sa.BigInteger),
    sa.Column("start_date", sa.Date),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("deactivate_time", sa.DateTime(timezone=True)),
    sa.Column("state", sa.Text, nullable=False),
)

invitations = sa.Table(
    "invitations", metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("restaurant_id", pg.UUID(as_uuid=True), sa.ForeignKey(restaurants.c.id),
              nullable=False),
    sa.Column("employee_id", pg.UUID(as_uuid=True), sa.ForeignKey(employees.c.id), nullable=False),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("token_hash", sa.LargeBinary, nullable=False),
    sa.Column("invited_by", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("send_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("send_count", sa.Integer, nullable=False, server_default="1"),
    sa.Column("accept_time", sa.DateTime(timezone=True)),
    sa.Column("accepted_by", pg.UUID(as_uuid=True)),
    sa.Column("revoke_time", sa.DateTime(timezone=True)),
)
_open_invitation = sa.and_(invitations.c.accept_time.is_(None), invitations.c.revoke_time.is_(None))

# Every invitation mail (the first and each resend), kept across invitations: the send limits
# count these per address and restaurant.
invitation_sends = sa.Table(
    "invitation_sends", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("restaurant_id", pg.UUID(as_uuid=True), sa.ForeignKey(restaurants.c.id),
              nullable=False),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("invitation_id", pg.UUID(as_uuid=True), sa.ForeignKey(invitations.c.id),
              nullable=False),
    sa.Column("send_time", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.func.now()),
)

# Who changed which employee record, how, and when: the history kept across deactivations.
employee_changes = sa.Table(
    "employee_changes", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("restaurant_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("employee_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("actor_user_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("changes", pg.JSONB, nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

RESTAURANT_ADDRESS_COLUMNS = {
    "line1": "address_line1", "line2": "address_line2", "city": "address_city",
    "region": "address_region", "postal_code": "address_postal_code", "country": "address_country",
}


def _restaurant(row: Any) -> Restaurant:
    return Restaurant(
        id=row.id, name=row.name, timezone=row.timezone, currency=row.currency,
        address=Address(line1=row.address_line1, line2=row.address_line2, city=row.address_city,
                        region=row.address_region, postal_code=row.address_postal_code,
                        country=row.address_country),
        version=row.version, create_time=row.create_time, update_time=row.update_time,
    )


def _employee(row: Any) -> Employee:
    return Employee(
        id=row.id, restaurant_id=row.restaurant_id, user_id=row.user_id,
        first_name=row.first_name, last_name=row.last_name, email=row.email, phone=row.phone,
        access_role=row.access_role, job_title=row.job_title,
        hourly_rate_minor=row.hourly_rate_minor, start_date=row.start_date, active=row.active,
        version=row.version, create_time=row.create_time, update_time=row.update_time,
        deactivate_time=row.deactivate_time, state=row.state,
    )


# An invitation with what a list shows beside it: the restaurant's name, the employee's role.
_INVITATION_VIEW = (sa.select(invitations, restaurants.c.name.label("restaurant_name"),
                              employees.c.access_role)
                    .join(restaurants, restaurants.c.id == invitations.c.restaurant_id)
                    .join(employees, employees.c.id == invitations.c.employee_id))


def _invitation(row: Any) -> Invitation:
    return Invitation(
        id=row.id, restaurant_id=row.restaurant_id, restaurant_name=row.restaurant_name,
        employee_id=row.employee_id, email=row.email, access_role=row.access_role,
        create_time=row.create_time, expire_time=row.expire_time, send_time=row.send_time,
        send_count=row.send_count, accept_time=row.accept_time, revoke_time=row.revoke_time)


def _invitation_state(state: str, now: Any) -> sa.ColumnElement[bool] | None:
    if state == PENDING:
        return sa.and_(_open_invitation, invitations.c.expire_time > now)
    if state == EXPIRED:
        return sa.and_(_open_invitation, invitations.c.expire_time <= now)
    if state == ACCEPTED:
        return invitations.c.accept_time.is_not(None)
    if state == REVOKED:
        return invitations.c.revoke_time.is_not(None)
    return None


def _after(table: sa.Table, page: PageRequest) -> sa.ColumnElement[bool] | None:
    if page.after is None:
        return None
    create_time, row_id = page.after
    return sa.tuple_(table.c.create_time, table.c.id) > sa.tuple_(
        sa.literal(create_time, sa.DateTime(timezone=True)), sa.literal(row_id, pg.UUID(as_uuid=True)))


def restaurant_address_values(address: Address) -> dict[str, str | None]:
    return {column: getattr(address, field) for field, column in RESTAURANT_ADDRESS_COLUMNS.items()}


class StaffTransaction:
    """Writes, inside one database transaction. Rows read `for_update` stay locked until commit."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def lock_restaurant(self, restaurant_id: uuid.UUID) -> Restaurant | None:
        """Locks the restaurant row: employee writes of one restaurant run one at a time, so
        checks across rows (the last active owner) cannot race."""
        row = (await self.conn.execute(
            sa.select(restaurants).where(restaurants.c.id == restaurant_id).with_for_update()
        )).first()
        return _restaurant(row) if row else None

    async def insert_restaurant(self, restaurant_id: uuid.UUID, new: NewRestaurant) -> Restaurant:
        row = (await self.conn.execute(
            restaurants.insert().values(id=restaurant_id, name=new.name, timezone=new.timezone,
                                        currency=new.currency,
                                        **restaurant_address_values(new.address))
            .returning(restaurants)
        )).one()
        return _restaurant(row)

    async def update_restaurant(self, restaurant_id: uuid.UUID, values: dict[str, Any]) -> Restaurant:
        row = (await self.conn.execute(
            restaurants.update().where(restaurants.c.id == restaurant_id)
            .values(**values, version=restaurants.c.version + 1, update_time=sa.func.now())
            .returning(restaurants)
        )).one()
        return _restaurant(row)

    async def insert_employee(self, restaurant_id: uuid.UUID, new: NewEmployee, *,
                              user_id: uuid.UUID | None = None) -> Employee | None:
        """An invited employee (ACTIVE when `user_id` is given: a restaurant's creator). None
        when the address (or the user) already has a live record in this restaurant."""
        statement = pg.insert(employees).values(
            id=uuid.uuid4(), restaurant_id=restaurant_id, user_id=user_id,
            first_name=new.first_name, last_name=new.last_name, email=new.email, phone=new.phone,
            access_role=new.access_role, job_title=new.job_title,
            hourly_rate_minor=new.hourly_rate_minor, start_date=new.start_date,
            state=ACTIVE if user_id is not None else INVITED, active=user_id is not None,
        ).on_conflict_do_nothing()
        row = (await self.conn.execute(statement.returning(employees))).first()
        return _employee(row) if row else None

    async def employee_with_email(self, restaurant_id: uuid.UUID, email: str) -> Employee | None:
        """The record of an address in this restaurant, a live one first."""
        row = (await self.conn.execute(
            sa.select(employees).where(employees.c.restaurant_id == restaurant_id,
                                       employees.c.email == email)
            .order_by((employees.c.state == DEACTIVATED).asc(), employees.c.create_time.desc())
        )).first()
        return _employee(row) if row else None

    async def deactivate_employee(self, employee_id: uuid.UUID) -> Employee:
        return await self.update_employee(employee_id, {
            "state": DEACTIVATED, "active": False, "deactivate_time": sa.func.now()})

    async def reactivate_employee(self, employee_id: uuid.UUID, *, invited: bool) -> Employee:
        """Back to work: ACTIVE, or INVITED again for someone who never accepted."""
        return await self.update_employee(employee_id, {
            "state": INVITED if invited else ACTIVE, "active": not invited,
            "deactivate_time": None})

    async def activate_employee(self, employee_id: uuid.UUID, user_id: uuid.UUID) -> Employee:
        return await self.update_employee(employee_id, {
            "state": ACTIVE, "active": True, "user_id": user_id})

    # --- invitations ---------------------------------------------------------------------

    async def insert_invitation(self, restaurant_id: uuid.UUID, new: NewInvitation) -> Invitation:
        """A new invitation, counted as a mail to its address."""
        invitation_id = uuid.uuid4()
        await self.conn.execute(invitations.insert().values(
            id=invitation_id, restaurant_id=restaurant_id, employee_id=new.employee_id,
            email=new.email, token_hash=new.token_digest, invited_by=uuid.UUID(new.invited_by),
            create_time=sa.func.now(), expire_time=new.expire_time, send_time=sa.func.now()))
        await self._count_send(restaurant_id, new.email, invitation_id)
        return await self._invitation_where(invitations.c.id == invitation_id)

    async def invitation_send_times(self, restaurant_id: uuid.UUID, email: str, *,
                                    since: datetime) -> list[datetime]:
        """When this restaurant mailed an invitation to `email` since `since`, oldest first."""
        rows = (await self.conn.execute(
            sa.select(invitation_sends.c.send_time)
            .where(invitation_sends.c.restaurant_id == restaurant_id,
                   invitation_sends.c.email == email, invitation_sends.c.send_time > since)
            .order_by(invitation_sends.c.send_time)
        )).all()
        return [row.send_time for row in rows]

    async def _count_send(self, restaurant_id: uuid.UUID, email: str,
                          invitation_id: uuid.UUID) -> None:
        await self.conn.execute(invitation_sends.insert().values(
            restaurant_id=restaurant_id, email=email, invitation_id=invitation_id,
            send_time=sa.func.now()))

    async def invitation_for_update(self, restaurant_id: uuid.UUID | None, *,
                                    invitation_id: uuid.UUID | None = None,
                                    token_digest: bytes | None = None) -> Invitation | None:
        """By id (in a restaurant, or any when None) or by the digest of its token; locked."""
        where = (invitations.c.token_hash == token_digest if token_digest is not None
                 else invitations.c.id == invitation_id)
        if restaurant_id is not None:
            where = sa.and_(where, invitations.c.restaurant_id == restaurant_id)
        locked = (await self.conn.execute(
            sa.select(invitations.c.id).where(where).with_for_update())).first()
        if locked is None:
            return None
        return await self._invitation_where(invitations.c.id == locked.id)

    async def open_invitation_of_employee(self, employee_id: uuid.UUID) -> Invitation | None:
        return await self._invitation_where(sa.and_(invitations.c.employee_id == employee_id,
                                                    _open_invitation))

    async def resend_invitation(self, invitation_id: uuid.UUID, *, token_digest: bytes,
                                expire_time: Any) -> Invitation:
        """A new link and expiry, counted as a mail to its address."""
        row = (await self.conn.execute(
            invitations.update().where(invitations.c.id == invitation_id)
            .values(token_hash=token_digest, expire_time=expire_time, send_time=sa.func.now(),
                    send_count=invitations.c.send_count + 1)
            .returning(invitations.c.restaurant_id, invitations.c.email))).one()
        await self._count_send(row.restaurant_id, row.email, invitation_id)
        return await self._invitation_where(invitations.c.id == invitation_id)

    async def close_invitation(self, invitation_id: uuid.UUID, *,
                               accepted_by: uuid.UUID | None = None) -> Invitation:
        """Accepted (by that user) or, without one, revoked."""
        values = ({"accept_time": sa.func.now(), "accepted_by": accepted_by}
                  if accepted_by is not None else {"revoke_time": sa.func.now()})
        await self.conn.execute(invitations.update().where(invitations.c.id == invitation_id)
                                .values(**values))
        return await self._invitation_where(invitations.c.id == invitation_id)

    async def _invitation_where(self, where: sa.ColumnElement[bool]) -> Invitation | None:
        row = (await self.conn.execute(_INVITATION_VIEW.where(where))).first()
        return _invitation(row) if row else None

    async def employee_for_update(self, restaurant_id: uuid.UUID, employee_id: uuid.UUID) -> Employee | None:
        row = (await self.conn.execute(
            sa.select(employees)
            .where(employees.c.restaurant_id == restaurant_id, employees.c.id == employee_id)
            .with_for_update()
        )).first()
        return _employee(row) if row else None

    async def employee_of_user(self, restaurant_id: uuid.UUID, user_id: uuid.UUID) -> Employee | None:
        return await _employee_of_user(self.conn, restaurant_id, user_id)

    async def update_employee(self, employee_id: uuid.UUID, values: dict[str, Any]) -> Employee:
        row = (await self.conn.execute(
            employees.update().where(employees.c.id == employee_id)
            .values(**values, version=employees.c.version + 1, update_time=sa.func.now())
            .returning(employees)
        )).one()
        return _employee(row)

    async def count_active_owners(self, restaurant_id: uuid.UUID, *, excluding: uuid.UUID) -> int:
        return (await self.conn.execute(
            sa.select(sa.func.count()).select_from(employees).where(
                employees.c.restaurant_id == restaurant_id, employees.c.active,
                employees.c.access_role == "owner", employees.c.id != excluding)
        )).scalar_one()

    async def enqueue_mail(self, mail: Mail) -> None:
        """Sent once this transaction commits; never if it rolls back."""
        await enqueue(self.conn, mail)

    async def record_change(self, employee: Employee, actor_user_id: str, action: str,
                            changes: dict[str, Any]) -> None:
        await self.conn.execute(employee_changes.insert().values(
            restaurant_id=employee.restaurant_id, employee_id=employee.id,
            actor_user_id=uuid.UUID(actor_user_id), action=action, changes=changes))


async def _employee_of_user(conn: AsyncConnection, restaurant_id: uuid.UUID,
                            user_id: uuid.UUID) -> Employee | None:
    row = (await conn.execute(
        sa.select(employees)
        .where(employees.c.restaurant_id == restaurant_id, employees.c.user_id == user_id)
    )).first()
    return _employee(row) if row else None


class StaffStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[StaffTransaction]:
        async with self.engine.begin() as conn:
            yield StaffTransaction(conn)

    async def invitations(self, restaurant_id: uuid.UUID, state: str,
                          page: PageRequest) -> list[Invitation]:
        """One page plus one row, newest first."""
        query = (_INVITATION_VIEW.where(invitations.c.restaurant_id == restaurant_id)
                 .order_by(invitations.c.create_time.desc(), invitations.c.id.desc())
                 .limit(page.size + 1))
        if (condition := _invitation_state(state, sa.func.now())) is not None:
            query = query.where(condition)
        if page.after is not None:
            create_time, row_id = page.after
            query = query.where(sa.tuple_(invitations.c.create_time, invitations.c.id) < sa.tuple_(
                sa.literal(create_time, sa.DateTime(timezone=True)),
                sa.literal(row_id, pg.UUID(as_uuid=True))))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_invitation(row) for row in rows]

    async def pending_invitations_for(self, email: str) -> list[Invitation]:
        """Open, unexpired invitations to an address, in every restaurant."""
        query = (_INVITATION_VIEW.where(invitations.c.email == email,
                                        _invitation_state(PENDING, sa.func.now()))
                 .order_by(invitations.c.create_time.desc()))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_invitation(row) for row in rows]

    async def member_restaurants(self, user_id: uuid.UUID, page: PageRequest) -> list[MemberRestaurant]:
        """Restaurants where the user is an active employee, in (create_time, id) order."""
        query = (
            sa.select(restaurants, employees.c.access_role.label("member_role"))
            .join(employees, employees.c.restaurant_id == restaurants.c.id)
            .where(employees.c.user_id == user_id, employees.c.active)
            .order_by(restaurants.c.create_time, restaurants.c.id)
            .limit(page.size + 1)
        )
        if (after := _after(restaurants, page)) is not None:
            query = query.where(after)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [MemberRestaurant(_restaurant(row), row.member_role) for row in rows]

    async def member_restaurant(self, user_id: uuid.UUID, restaurant_id: uuid.UUID) -> MemberRestaurant | None:
        query = (
            sa.select(restaurants, employees.c.access_role.label("member_role"))
            .join(employees, employees.c.restaurant_id == restaurants.c.id)
            .where(employees.c.user_id == user_id, employees.c.active,
                   restaurants.c.id == restaurant_id)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return MemberRestaurant(_restaurant(row), row.member_role) if row else None

    async def employees(self, restaurant_id: uuid.UUID, where: EmployeeFilter,
                        page: PageRequest) -> list[Employee]:
        """One page plus one row (so the caller knows whether there is a next page)."""
        query = (
            sa.select(employees).where(employees.c.restaurant_id == restaurant_id)
            .order_by(employees.c.create_time, employees.c.id).limit(page.size + 1)
        )
        if where.access_role is not None:
            query = query.where(employees.c.access_role == where.access_role)
        if where.state in (ACTIVE, INVITED):
            query = query.where(employees.c.state == where.state)
        elif where.state == INACTIVE:
            query = query.where(employees.c.state == DEACTIVATED)
        if (after := _after(employees, page)) is not None:
            query = query.where(after)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_employee(row) for row in rows]

    async def employee(self, restaurant_id: uuid.UUID, employee_id: uuid.UUID) -> Employee | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                sa.select(employees)
                .where(employees.c.restaurant_id == restaurant_id, employees.c.id == employee_id)
            )).first()
        return _employee(row) if row else None

    async def employee_of_user(self, restaurant_id: uuid.UUID, user_id: uuid.UUID) -> Employee | None:
        async with self.engine.connect() as conn:
            return await _employee_of_user(conn, restaurant_id, user_id)

    async def active_members(self, restaurant_id: uuid.UUID) -> list[tuple[uuid.UUID, str]]:
        """(user id, access role) of every active employee."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(employees.c.user_id, employees.c.access_role)
                .where(employees.c.restaurant_id == restaurant_id, employees.c.active)
            )).all()
        return [(row.user_id, row.access_role) for row in rows]
