"""Least privilege in Redis: an ACL user per service, limited to its own key patterns and pub/sub
channels (Redis 6.2+ ACLs; the embedded Redis is 6.2).

| user     | keys                                                 | channels                           |
|----------|------------------------------------------------------|------------------------------------|
| auth     | auth:*                                               | auth:* (publishes revocations)     |
| staff    | staff:*                                              | auth:revocations                   |
| orders   | orders:*                                             | auth:revocations                   |
| realtime | realtime:*, auth:user-events, staff:user-events      | auth:revocations, realtime:control:* |

Every user may run data commands only: `+@all -@dangerous` (no KEYS, FLUSHALL, CONFIG, ACL,
DEBUG, MONITOR, CLIENT ...). A channel pattern allows subscribing and publishing alike (Redis ACLs
do not tell them apart), so users that never publish (staff, orders) lose PUBLISH altogether;
realtime, which publishes on its control channels, could still publish on auth:revocations (at
worst a forged logout: docs/security.md). Likewise a key pattern allows reading and writing on
6.2: there realtime could write the two user-event streams it reads; on Redis 7+ (an outside
Redis) they are read-only for it (`%R~`). Embedded Redis gets the users in its config file (so they survive its
restarts) and a password on the default user, which only the stack holds. An outside Redis
(REDIS_URL) gets them with ACL SETUSER through the URL given, named after the stack so stacks
sharing one server do not collide, and loses them when the stack stops (`remove_users`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from stack.db_roles import generated_secret

SERVICES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "auth": (("auth:*",), ("auth:*",)),
    "staff": (("staff:*",), ("auth:revocations",)),
    "orders": (("orders:*",), ("auth:revocations",)),
    "realtime": (("realtime:*", "auth:user-events", "staff:user-events"),
                 ("auth:revocations", "realtime:control:*")),
}
# Keys a user only reads: read-only (`%R~`) on Redis 7+, plain `~` (read and write) before.
READ_ONLY = {"realtime": frozenset({"auth:user-events", "staff:user-events"})}
COMMANDS = "+@all -@dangerous"
PUBLISHERS = frozenset({"auth", "realtime"})
ADMIN = "default"


def user_prefix(data_dir: Path, *, embedded: bool) -> str:
    if embedded:
        return "posmesh"
    return "posmesh-" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:10]


def rules(service: str, secret: str, *, read_only_keys: bool = False) -> str:
    """The ACL rules of `service`'s user; `read_only_keys` (Redis 7+): READ_ONLY keys as `%R~`."""
    keys, channels = SERVICES[service]
    readers = READ_ONLY.get(service, frozenset()) if read_only_keys else frozenset()
    return " ".join(["on", f">{secret}", "resetkeys",
                     *(f"%R~{k}" if k in readers else f"~{k}" for k in keys),
                     "resetchannels", *(f"&{c}" for c in channels), COMMANDS,
                     *([] if service in PUBLISHERS else ["-publish"])])


def config_lines(prefix: str, secrets_dir: Path) -> list[str]:
    """`user` directives for an embedded Redis's config: the default user (the stack's) needs a
    password, and one user per service."""
    admin = generated_secret(secrets_dir, f"redis-{ADMIN}")
    lines = [f"user {ADMIN} on >{admin} ~* &* +@all"]
    for service in SERVICES:
        lines.append(f"user {prefix}-{service} " + rules(service, generated_secret(secrets_dir, f"redis-{service}")))
    return lines


def admin_url(url: str, secrets_dir: Path) -> str:
    """The embedded Redis's URL with the default user's password."""
    return _with_user(url, ADMIN, generated_secret(secrets_dir, f"redis-{ADMIN}"))


def service_urls(url: str, prefix: str, secrets_dir: Path) -> dict[str, str]:
    return {service: _with_user(url, f"{prefix}-{service}", generated_secret(secrets_dir, f"redis-{service}"))
            for service in SERVICES}


def add_users(url: str, prefix: str, secrets_dir: Path) -> None:
    """On an outside Redis, through `url` (which must be allowed ACL SETUSER)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        major = int(str(client.info("server")["redis_version"]).split(".")[0])
        for service in SERVICES:
            secret = generated_secret(secrets_dir, f"redis-{service}")
            client.execute_command("ACL", "SETUSER", f"{prefix}-{service}", "reset",
                                   *rules(service, secret, read_only_keys=major >= 7).split())
    finally:
        client.close()


def remove_users(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.execute_command("ACL", "DELUSER", *(f"{prefix}-{service}" for service in SERVICES))
    finally:
        client.close()


def _with_user(url: str, user: str, secret: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(secret, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
