"""Least privilege in PostgreSQL: a login role per service with rights on its own schema only, and
a separate owner role that runs the migrations and owns every table.

    <prefix>_owner    owns the schemas auth, staff, orders and everything in them (migrations)
    <prefix>_auth     USAGE on schema auth; SELECT/INSERT/UPDATE/DELETE on its tables, its sequences
    <prefix>_staff    the same on staff
    <prefix>_orders   the same on orders

Nothing else: no CREATE anywhere, nothing in another service's schema (PUBLIC's rights on the
three schemas are revoked). The prefix is the database's name (`posmesh` for the default
databases), so stacks sharing one PostgreSQL server have roles of their own.

`bootstrap()` runs with a superuser (or CREATEROLE) URL: the embedded server's, or DATABASE_URL
when it points at an outside server. It is idempotent: roles are created or given their current
password, tables made before the roles existed are handed to the owner, grants re-applied.
Passwords come from files (`<secrets dir>/db-<role>.password`, 0600, made on first run) or, for
a deployment, from the same files mounted as secrets.
"""

from __future__ import annotations

import asyncio
import secrets as random
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

SCHEMAS = ("auth", "staff", "orders")
OWNER = "owner"


@dataclass(frozen=True)
class DatabaseRoles:
    owner_url: str
    service_urls: dict[str, str]  # schema (= service) -> its URL


def role_prefix(database: str) -> str:
    return "posmesh" if database in ("postgres", "posmesh", "") else database


def role_names(database: str) -> dict[str, str]:
    """'owner' and each schema -> its role name."""
    prefix = role_prefix(database)
    return {part: f"{prefix}_{part}" for part in (OWNER, *SCHEMAS)}


def password(secrets_dir: Path, role: str) -> str:
    """The role's password from its file (db-<role>.password), made on first use."""
    return generated_secret(secrets_dir, f"db-{role}")


def generated_secret(secrets_dir: Path, name: str) -> str:
    """`<secrets dir>/<name>.password`: read, or made (random, 0600) on first use."""
    path = secrets_dir / f"{name}.password"
    if not path.exists():
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(random.token_urlsafe(24))
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_text().strip()


def url_as(admin_url: str, role: str, role_password: str) -> str:
    """`admin_url` with another user and password (same server, database and options)."""
    url = make_url(admin_url).set(username=role, password=role_password)
    return url.render_as_string(hide_password=False)


def bootstrap(admin_url: str, secrets_dir: Path) -> DatabaseRoles:
    """Creates (or updates) the roles and grants; returns the URLs to connect as each."""
    database = make_url(admin_url).database or ""
    names = role_names(database)
    passwords = {part: password(secrets_dir, role) for part, role in names.items()}
    asyncio.run(_apply(admin_url, database, names, passwords))
    return DatabaseRoles(
        owner_url=url_as(admin_url, names[OWNER], passwords[OWNER]),
        service_urls={schema: url_as(admin_url, names[schema], passwords[schema])
                      for schema in SCHEMAS})


def _sql(database: str, names: dict[str, str], passwords: dict[str, str]) -> list[str]:
    owner = _ident(names[OWNER])
    statements = []
    for part, role in names.items():
        literal = _literal(passwords[part])
        statements.append(f"""
            DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {_literal(role)}) THEN
                CREATE ROLE {_ident(role)} LOGIN PASSWORD {literal};
              ELSE
                ALTER ROLE {_ident(role)} LOGIN PASSWORD {literal};
              END IF;
            END $$""")
        statements.append(f"ALTER ROLE {_ident(role)} NOSUPERUSER NOCREATEDB NOCREATEROLE "
                          "NOREPLICATION NOBYPASSRLS")
    statements.append(f"GRANT CONNECT, TEMPORARY ON DATABASE {_ident(database)} TO "
                      + ", ".join(_ident(role) for role in names.values()))
    for schema in SCHEMAS:
        role = _ident(names[schema])
        statements += [
            f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)} AUTHORIZATION {owner}",
            f"ALTER SCHEMA {_ident(schema)} OWNER TO {owner}",
            # Tables and sequences made before the roles existed (an older data dir).
            f"""DO $$ DECLARE item record; BEGIN
                  FOR item IN SELECT c.relname, c.relkind FROM pg_class c
                               JOIN pg_namespace n ON n.oid = c.relnamespace
                               WHERE n.nspname = {_literal(schema)} AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
                                 AND pg_get_userbyid(c.relowner) <> {_literal(names[OWNER])}
                                 AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.objid = c.oid
                                                 AND d.deptype IN ('a', 'i') AND c.relkind = 'S')
                  LOOP
                    EXECUTE format('ALTER %s %I.%I OWNER TO %I',
                      CASE item.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                        WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
                      {_literal(schema)}, item.relname, {_literal(names[OWNER])});
                  END LOOP;
                END $$""",
            f"REVOKE ALL ON SCHEMA {_ident(schema)} FROM PUBLIC",
            f"GRANT USAGE ON SCHEMA {_ident(schema)} TO {role}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {_ident(schema)} TO {role}",
            f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {_ident(schema)} TO {role}",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {_ident(schema)} "
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {_ident(schema)} "
            f"GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {role}",
        ]
    return statements


async def _apply(admin_url: str, database: str, names: dict[str, str],
                 passwords: dict[str, str]) -> None:
    import asyncpg

    dsn = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        # One bootstrap at a time per server (roles are shared by its databases).
        await connection.execute("SELECT pg_advisory_lock(hashtext('posmesh-db-roles'))")
        try:
            for statement in _sql(database, names, passwords):
                await connection.execute(statement)
        finally:
            await connection.execute("SELECT pg_advisory_unlock(hashtext('posmesh-db-roles'))")
    finally:
        await connection.close()


async def drop_roles(admin_url: str, database: str) -> None:
    """After the database is dropped (tests): its roles own nothing else."""
    import asyncpg

    dsn = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        for role in role_names(database).values():
            await connection.execute(f"DROP ROLE IF EXISTS {_ident(role)}")
    finally:
        await connection.close()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def migrate(owner_url: str, database_url_setting_name: str = "DATABASE_URL") -> None:
    """Every service's migrations, as the owner role (blocking; a thread of its own is fine)."""
    from posmesh.common.migrations import run_migrations
    from posmesh.common.settings import Settings

    root = Path(__file__).resolve().parent.parent / "services"
    settings = Settings(**{database_url_setting_name: owner_url})
    for schema in SCHEMAS:
        asyncio.run(run_migrations(settings, root / schema, schema))
