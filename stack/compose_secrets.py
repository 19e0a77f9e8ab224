"""The files docker-compose.yml mounts as secrets, made by `posmesh compose-secrets` into
`.posmesh/compose/` (git-ignored, never in an image): each container gets only its own.

    mesh/                            the mesh CA and each identity's certificate and key
    postgres.password                the PostgreSQL superuser's (the migrate step's only)
    migrate-database-url             the superuser URL `posmesh migrate` bootstraps roles with
    db-<role>.password               each role's password (stack/db_roles.py)
    redis-<user>.password            each Redis user's (stack/redis_acl.py)
    <service>-database-url           what the service connects with: its own role
    <service>-redis-url              its own Redis ACL user (stack/redis_acl.py)
    redis-users.acl                  the Redis server's ACL file: the users, and a default user
                                     that may only PING (the health check)

Made once; run it again to add what is missing (nothing is replaced). The folder is 0700; the
files in it are readable by any user inside the containers they are mounted into.
"""

from __future__ import annotations

import os
from pathlib import Path

from stack import db_roles, redis_acl
from stack.mesh_certs import ensure_mesh_certs

DATABASE = "posmesh"
POSTGRES_HOST, REDIS_HOST = "postgres:5432", "redis:6379"
REDIS_PREFIX = "posmesh"


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    ensure_mesh_certs(folder / "mesh")
    superuser = db_roles.generated_secret(folder, "postgres")
    admin = f"postgresql://posmesh:{superuser}@{POSTGRES_HOST}/{DATABASE}"
    _secret(folder / "migrate-database-url", admin)
    names = db_roles.role_names(DATABASE)
    for schema in db_roles.SCHEMAS:
        role = names[schema]
        _secret(folder / f"{schema}-database-url",
                db_roles.url_as(admin, role, db_roles.password(folder, role)))
    db_roles.password(folder, names[db_roles.OWNER])
    redis_url = f"redis://{REDIS_HOST}/0"
    for service, url in redis_acl.service_urls(redis_url, REDIS_PREFIX, folder).items():
        _secret(folder / f"{service}-redis-url", url)
    users = [line for line in redis_acl.config_lines(REDIS_PREFIX, folder)
             if not line.startswith(f"user {redis_acl.ADMIN} ")]
    _secret(folder / "redis-users.acl",
            "\n".join([f"user {redis_acl.ADMIN} on nopass resetkeys resetchannels -@all +ping",
                       *users]) + "\n")
    return sorted(path for path in folder.rglob("*") if path.is_file())


def _secret(path: Path, value: str) -> None:
    if path.exists():
        return
    # Readable inside the container whatever user it runs as (compose bind-mounts file secrets
    # with their host mode); on the host the folder itself is 0700.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
