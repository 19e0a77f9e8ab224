"""The staff schema's SQL (SQLAlchemy Core on asyncpg). Every employee query takes the restaurant
id, so no query can reach another restaurant's rows by employee id alone."""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.staff.models import (
    ACTIVE,
    INACTIVE,
    Address,
    Employee,
    EmployeeFilter,
    MemberRestaurant,
    NewEmployee,
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
    sa.Column("user_id", pg.UUID(as_uuid=True), nullable=False),
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
        deactivate_time=row.deactivate_time,
    )


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

    async def insert_employee(self, restaurant_id: uuid.UUID, user_id: uuid.UUID,
                              new: NewEmployee) -> Employee | None:
        """The new record, or None when this user already has one in this restaurant."""
        statement = pg.insert(employees).values(
            id=uuid.uuid4(), restaurant_id=restaurant_id, user_id=user_id,
            first_name=new.first_name, last_name=new.last_name, email=new.email, phone=new.phone,
            access_role=new.access_role, job_title=new.job_title,
            hourly_rate_minor=new.hourly_rate_minor, start_date=new.start_date,
        ).on_conflict_do_nothing(index_elements=[employees.c.restaurant_id, employees.c.user_id])
        row = (await self.conn.execute(statement.returning(employees))).first()
        return _employee(row) if row else None

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
        if where.state == ACTIVE:
            query = query.where(employees.c.active)
        elif where.state == INACTIVE:
            query = query.where(sa.not_(employees.c.active))
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
