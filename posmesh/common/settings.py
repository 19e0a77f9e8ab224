"""Every setting of the system, read from environment variables (documented in the README)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic import field_validator, model_validator
from typing import Annotated, Literal


# Stateless services `posmesh run` starts several processes of (realtime: REALTIME_WS_ADDRS).
REPLICATED_SERVICES = ("auth", "staff", "orders")


def cpu_count() -> int:
    """Cores this process may run on (its affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    env: str = Field("development", alias="POSMESH_ENV")
    data_dir: Path = Field(Path(".posmesh"), alias="POSMESH_DATA_DIR")
    log_level: str = Field("INFO", alias="LOG_LEVEL")
    # A folder of files named after settings (e.g. /run/secrets/DATABASE_URL): their contents
    # are the values of settings not set in the environment. How containers get secrets.
    secrets_dir: Path | None = Field(None, alias="POSMESH_SECRETS_DIR")

    # Backing stores: embedded (real) servers are started by `posmesh run` when these are unset.
    database_url: str | None = Field(None, alias="DATABASE_URL")
    redis_url: str | None = Field(None, alias="REDIS_URL")

    # Database pool (per service process). The sum over all processes must fit max_connections.
    db_pool_size: int = Field(20, alias="DB_POOL_SIZE")
    db_max_overflow: int = Field(40, alias="DB_MAX_OVERFLOW")
    db_pool_pre_ping: bool = Field(True, alias="DB_POOL_PRE_PING")
    db_pool_recycle: int = Field(3600, alias="DB_POOL_RECYCLE")
    db_pool_timeout: float = Field(10.0, alias="DB_POOL_TIMEOUT")
    db_statement_timeout_ms: int = Field(15000, alias="DB_STATEMENT_TIMEOUT_MS")

    # Service addresses: where each service binds and where the others call it.
    auth_addr: str = Field("127.0.0.1:50051", alias="AUTH_ADDR")
    staff_addr: str = Field("127.0.0.1:50052", alias="STAFF_ADDR")
    orders_addr: str = Field("127.0.0.1:50053", alias="ORDERS_ADDR")
    realtime_addr: str = Field("127.0.0.1:50054", alias="REALTIME_ADDR")
    realtime_ws_addr: str = Field("127.0.0.1:8081", alias="REALTIME_WS_ADDR")
    realtime_ws_addrs: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="REALTIME_WS_ADDRS"
    )
    # Replicas of the stateless services: how many processes of each `posmesh run` starts (by
    # default one per CPU core). The first binds *_ADDR, the others free loopback ports; *_ADDRS
    # lists every replica (the supervisor fills it in): Envoy and the other services' channels
    # balance over it. Empty: *_ADDR alone.
    auth_replicas: int = Field(default_factory=cpu_count, alias="AUTH_REPLICAS", ge=1)
    staff_replicas: int = Field(default_factory=cpu_count, alias="STAFF_REPLICAS", ge=1)
    orders_replicas: int = Field(default_factory=cpu_count, alias="ORDERS_REPLICAS", ge=1)
    auth_addrs: Annotated[list[str], NoDecode] = Field(default_factory=list, alias="AUTH_ADDRS")
    staff_addrs: Annotated[list[str], NoDecode] = Field(default_factory=list, alias="STAFF_ADDRS")
    orders_addrs: Annotated[list[str], NoDecode] = Field(default_factory=list, alias="ORDERS_ADDRS")

    # Edge.
    edge_host: str = Field("0.0.0.0", alias="EDGE_HOST")
    edge_port: int = Field(8443, alias="EDGE_PORT")
    envoy_admin_port: int = Field(9901, alias="ENVOY_ADMIN_PORT")
    cors_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["capacitor://localhost", "http://localhost:19006"],
        alias="CORS_ALLOWED_ORIGINS",
    )
    login_rate_limit_per_minute: int = Field(600, alias="EDGE_LOGIN_RATE_LIMIT_PER_MINUTE")
    # Registrations, password-reset requests and invitation acceptances per client address per
    # minute at the edge (each costs a password hash or a mail).
    signup_rate_limit_per_minute: int = Field(30, alias="EDGE_SIGNUP_RATE_LIMIT_PER_MINUTE")
    # Public health checks per client address per minute at the edge (load balancers, apps).
    health_rate_limit_per_minute: int = Field(120, alias="EDGE_HEALTH_RATE_LIMIT_PER_MINUTE")
    # --- platform edge (owned by stack/ and envoy/) ---
    # How long Envoy keeps the JWKS it fetched from the auth service before fetching it again.
    edge_jwks_cache_seconds: int = Field(60, alias="EDGE_JWKS_CACHE_SECONDS")
    # Largest request body the edge accepts; beyond it the reply is 413 PAYLOAD_TOO_LARGE.
    edge_max_request_bytes: int = Field(1024 * 1024, alias="EDGE_MAX_REQUEST_BYTES")
    # Deadline of a unary call through the edge (streams and WebSockets have none).
    edge_request_timeout_seconds: float = Field(15.0, alias="EDGE_REQUEST_TIMEOUT_SECONDS")
    # Admission control (posmesh/common/admission.py): unary calls in flight per service process
    # in each lane (critical; everything else), and the edge's circuit breakers per cluster
    # (this times the replicas). From Little's law and the bench (docs/platform.md).
    admission_max_in_flight: int = Field(32, alias="ADMISSION_MAX_IN_FLIGHT", ge=1)
    # A read that already waited this long (since the edge received it) is refused; other calls
    # may wait twice as long, critical ones five times.
    admission_max_queue_ms: float = Field(200.0, alias="ADMISSION_MAX_QUEUE_MS", gt=0)
    # A call whose caller sent no deadline runs for at most this long.
    request_deadline_seconds: float = Field(10.0, alias="REQUEST_DEADLINE_SECONDS", gt=0)
    # --- end platform edge ---

    # Mutual TLS inside the mesh (posmesh/common/mesh_tls.py, docs/security.md). Each process
    # proves who it is with its certificate from the mesh CA; plaintext is refused. Off only to
    # measure what it costs (bench), never outside development.
    mesh_tls: bool = Field(True, alias="MESH_TLS")
    # Where `<name>.pem`, `<name>-key.pem` and ca.pem are (default <data dir>/certs/mesh, made
    # on first run); or this process's own files, e.g. container secrets.
    mesh_certs_dir: Path | None = Field(None, alias="MESH_CERTS_DIR")
    mesh_ca_file: Path | None = Field(None, alias="MESH_CA_FILE")
    mesh_cert_file: Path | None = Field(None, alias="MESH_CERT_FILE")
    mesh_key_file: Path | None = Field(None, alias="MESH_KEY_FILE")

    # Tokens.
    jwt_issuer: str = Field("https://auth.posmesh.local", alias="JWT_ISSUER")
    jwt_audience: str = Field("posmesh-api", alias="JWT_AUDIENCE")
    jwt_leeway_seconds: int = Field(10, alias="JWT_LEEWAY_SECONDS")
    jwt_keys_dir: Path | None = Field(None, alias="JWT_KEYS_DIR")
    jwks_refresh_seconds: int = Field(60, alias="JWKS_REFRESH_SECONDS")
    access_token_ttl_seconds: int = Field(900, alias="ACCESS_TOKEN_TTL_SECONDS")
    refresh_token_ttl_days: int = Field(30, alias="REFRESH_TOKEN_TTL_DAYS")
    refresh_token_absolute_days: int = Field(90, alias="REFRESH_TOKEN_ABSOLUTE_DAYS")
    refresh_grace_seconds: float = Field(5.0, alias="REFRESH_GRACE_SECONDS")

    # The local revocation set of every process (posmesh/common/revocation_follower.py).
    # While the auth:revocations channel is down, each process loads new revocations from auth
    # this often: the bound on how late a revocation is refused during a Redis outage.
    revocation_poll_seconds: float = Field(2.0, alias="REVOCATION_POLL_SECONDS", gt=0)
    # While the channel is up, a load this often all the same (a message lost unnoticed).
    revocation_resync_seconds: float = Field(30.0, alias="REVOCATION_RESYNC_SECONDS", gt=0)
    # Revocations one process remembers (each for the access-token lifetime plus a margin).
    revocation_set_max_entries: int = Field(100_000, alias="REVOCATION_SET_MAX_ENTRIES", ge=1000)

    # Passwords and brute force.
    password_min_length: int = Field(10, alias="PASSWORD_MIN_LENGTH")
    argon2_memory_kib: int = Field(19456, alias="ARGON2_MEMORY_KIB")
    argon2_time_cost: int = Field(2, alias="ARGON2_TIME_COST")
    argon2_parallelism: int = Field(1, alias="ARGON2_PARALLELISM")
    password_hash_workers: int = Field(2, alias="PASSWORD_HASH_WORKERS")
    login_max_failures: int = Field(5, alias="LOGIN_MAX_FAILURES")
    login_ip_max_failures: int = Field(50, alias="LOGIN_IP_MAX_FAILURES")
    login_lockout_base_seconds: int = Field(30, alias="LOGIN_LOCKOUT_BASE_SECONDS")
    login_lockout_max_seconds: int = Field(3600, alias="LOGIN_LOCKOUT_MAX_SECONDS")

    # --- Auth service (owned by services/auth) ---
    # Failures older than this no longer count towards a lockout.
    login_failure_window_seconds: int = Field(900, alias="LOGIN_FAILURE_WINDOW_SECONDS")
    # Wrong PINs on tills (services/auth/devices.py): per person in a restaurant and per device,
    # within LOGIN_FAILURE_WINDOW_SECONDS; lockouts start at LOGIN_LOCKOUT_BASE_SECONDS and double.
    pin_max_failures: int = Field(5, alias="PIN_MAX_FAILURES")
    pin_device_max_failures: int = Field(10, alias="PIN_DEVICE_MAX_FAILURES")
    # Password hashes queued for the executor beyond this fail fast with UNAVAILABLE.
    password_hash_max_pending: int = Field(256, alias="PASSWORD_HASH_MAX_PENDING")
    # A rotated-in key is published this long before it signs; it must exceed every verifier's
    # JWKS refresh interval (JWKS_REFRESH_SECONDS) so no service sees an unknown kid.
    jwt_key_publish_lead_seconds: int = Field(300, alias="JWT_KEY_PUBLISH_LEAD_SECONDS")
    # How long a session's user/restaurant view stays cached in Redis (revocation deletes it).
    session_cache_ttl_seconds: int = Field(60, alias="SESSION_CACHE_TTL_SECONDS")
    # How often expired sessions, spent refresh tokens and stale grace secrets are purged.
    auth_cleanup_interval_seconds: int = Field(600, alias="AUTH_CLEANUP_INTERVAL_SECONDS")
    # New passwords (registrations, resets, changes, invitations) hash one at a time in a
    # process of their own, paused while sign-ins hash, paced and with a bounded queue, so a
    # flood of them cannot slow sign-ins (services/auth/enrollment_hashing.py).
    enrollment_hash_max_pending: int = Field(6, alias="ENROLLMENT_HASH_MAX_PENDING", ge=1)
    enrollment_hashes_per_second: float = Field(2.0, alias="ENROLLMENT_HASHES_PER_SECOND", gt=0)
    # Verified email and password reset: link lifetimes and how many may be asked for.
    email_verification_ttl_hours: float = Field(24.0, alias="EMAIL_VERIFICATION_TTL_HOURS")
    password_reset_ttl_minutes: float = Field(30.0, alias="PASSWORD_RESET_TTL_MINUTES")
    verification_emails_per_hour: int = Field(5, alias="VERIFICATION_EMAILS_PER_HOUR")
    register_per_ip_per_hour: int = Field(20, alias="REGISTER_PER_IP_PER_HOUR")
    register_per_address_per_hour: int = Field(3, alias="REGISTER_PER_ADDRESS_PER_HOUR")
    password_reset_per_address_per_hour: int = Field(3, alias="PASSWORD_RESET_PER_ADDRESS_PER_HOUR")
    password_reset_per_ip_per_hour: int = Field(20, alias="PASSWORD_RESET_PER_IP_PER_HOUR")
    # Invitations (staff): how long a link works, and how often it may be mailed.
    invitation_ttl_hours: float = Field(168.0, alias="INVITATION_TTL_HOURS")
    invitation_sends_per_day: int = Field(10, alias="INVITATION_SENDS_PER_DAY")
    # --- end auth service ---

    # Realtime.
    ws_auth_timeout_seconds: float = Field(5.0, alias="WS_AUTH_TIMEOUT_SECONDS")
    ws_ping_interval_seconds: float = Field(20.0, alias="WS_PING_INTERVAL_SECONDS")
    ws_token_warning_seconds: int = Field(60, alias="WS_TOKEN_WARNING_SECONDS")
    ws_send_queue_size: int = Field(256, alias="WS_SEND_QUEUE_SIZE")
    ws_max_message_bytes: int = Field(65536, alias="WS_MAX_MESSAGE_BYTES")
    ws_max_connections_per_ip_per_minute: int = Field(120, alias="WS_MAX_CONNECTIONS_PER_IP_PER_MINUTE")
    ws_max_connections_per_user: int = Field(20, alias="WS_MAX_CONNECTIONS_PER_USER")
    ws_max_connections_per_restaurant: int = Field(2000, alias="WS_MAX_CONNECTIONS_PER_RESTAURANT")
    # Realtime (added by the realtime service): unsent bytes a socket may hold before it is closed
    # as a slow consumer (4008); WS_SEND_QUEUE_SIZE bounds the events held while a socket catches up.
    ws_send_buffer_bytes: int = Field(262144, alias="WS_SEND_BUFFER_BYTES")
    # Live sockets one session may hold per connection type; a newer one replaces the oldest
    # (closed 1000 REPLACED), so an app that reconnects without closing never doubles events.
    ws_max_sockets_per_session: int = Field(1, alias="WS_MAX_SOCKETS_PER_SESSION", ge=1)
    # A socket opened without last_event_id resumes where its session's previous socket got to,
    # if that was confirmed within this window and at most WS_RESUME_MAX_EVENTS ago; beyond,
    # the client is sent resync_required.
    ws_resume_window_seconds: int = Field(900, alias="WS_RESUME_WINDOW_SECONDS")
    ws_resume_max_events: int = Field(500, alias="WS_RESUME_MAX_EVENTS")
    # Who is sent the token_expired warning: "all" (an app that reconnects on it instead of
    # sending reauth opens new sockets, which replace the old with no gap and no repeat) or
    # "reauth-clients" (only sockets that declared the reauth capability or have sent a reauth;
    # the others are closed at expiry and reconnect). docs/realtime.md has both measured.
    ws_token_warning_to: Literal["all", "reauth-clients"] = Field(
        "all", alias="WS_TOKEN_WARNING_TO")

    # Orders (services/orders; docs/orders.md explains each).
    # Approximate length each restaurant's Redis stream is trimmed to (XADD MAXLEN ~).
    order_event_stream_maxlen: int = Field(10000, alias="ORDER_EVENT_STREAM_MAXLEN")
    # The most events a WatchOrders replay sends; a client further behind gets resync_required.
    order_event_replay_limit: int = Field(5000, alias="ORDER_EVENT_REPLAY_LIMIT")
    # Published events older than this are deleted from the outbox (replays cannot reach them).
    order_event_retention_days: float = Field(7.0, alias="ORDER_EVENT_RETENTION_DAYS")
    # The relay wakes on LISTEN/NOTIFY; this poll is its safety net.
    order_relay_poll_seconds: float = Field(1.0, alias="ORDER_RELAY_POLL_SECONDS")
    order_relay_batch_size: int = Field(500, alias="ORDER_RELAY_BATCH_SIZE")
    order_relay_max_backoff_seconds: float = Field(5.0, alias="ORDER_RELAY_MAX_BACKOFF_SECONDS")
    # A quiet WatchOrders stream sends a heartbeat this often (below Envoy's idle timeouts).
    order_watch_heartbeat_seconds: float = Field(15.0, alias="ORDER_WATCH_HEARTBEAT_SECONDS")
    # While Redis is unreadable, watchers poll PostgreSQL this often (and on NOTIFY).
    order_watch_poll_seconds: float = Field(0.5, alias="ORDER_WATCH_POLL_SECONDS")
    # An event committed this long ago but not yet on the Redis stream is read from PostgreSQL.
    order_watch_relay_grace_seconds: float = Field(1.0, alias="ORDER_WATCH_RELAY_GRACE_SECONDS")
    # How long a restaurant's currency and time zone (from the staff service) are cached.
    orders_restaurant_cache_seconds: float = Field(60.0, alias="ORDERS_RESTAURANT_CACHE_SECONDS")

    # Mail (posmesh/common/mail; docs/platform.md "How mail leaves").
    # smtp://host:port (no TLS), smtp+starttls://user:pass@host:587, smtps://user:pass@host:465.
    # Unset: `posmesh run` and the test stack start the embedded dev server and set it.
    smtp_url: str | None = Field(None, alias="SMTP_URL")
    mail_from: str = Field("posmesh <no-reply@posmesh.local>", alias="MAIL_FROM")
    # Where the app is reached from outside: links in mails start with it. Unset:
    # https://localhost:<EDGE_PORT>, the local edge.
    public_base_url: str | None = Field(None, alias="PUBLIC_BASE_URL")
    # A mail is tried this many times (backoff MAIL_RETRY_BASE_SECONDS doubling up to
    # MAIL_RETRY_MAX_SECONDS, with jitter), then marked failed; defaults retry about an hour.
    mail_max_attempts: int = Field(12, alias="MAIL_MAX_ATTEMPTS", ge=1)
    mail_retry_base_seconds: float = Field(5.0, alias="MAIL_RETRY_BASE_SECONDS", gt=0)
    mail_retry_max_seconds: float = Field(900.0, alias="MAIL_RETRY_MAX_SECONDS", gt=0)
    # The sender wakes on LISTEN/NOTIFY after a commit; this poll is its safety net.
    mail_poll_seconds: float = Field(5.0, alias="MAIL_POLL_SECONDS", gt=0)
    # Longest one delivery may take (connect, TLS, login, the message); a claimed mail is
    # left alone by other senders for twice this.
    mail_send_timeout_seconds: float = Field(30.0, alias="MAIL_SEND_TIMEOUT_SECONDS", gt=0)
    # Sent and failed mails (their links and tokens included) are deleted after this.
    mail_retention_days: float = Field(7.0, alias="MAIL_RETENTION_DAYS", gt=0)

    # One aggregated health check serves every caller of a process for this long.
    health_cache_seconds: float = Field(1.0, alias="HEALTH_CACHE_SECONDS")

    # Metrics (posmesh/common/metrics.py; docs/observability.md): each service process serves
    # Prometheus text at http://<addr>/metrics. Loopback by default; in a deployment the
    # operator's network only, never a route of the edge. Empty: no metrics page.
    auth_metrics_addr: str = Field("127.0.0.1:9101", alias="AUTH_METRICS_ADDR")
    staff_metrics_addr: str = Field("127.0.0.1:9102", alias="STAFF_METRICS_ADDR")
    orders_metrics_addr: str = Field("127.0.0.1:9103", alias="ORDERS_METRICS_ADDR")
    realtime_metrics_addr: str = Field("127.0.0.1:9104", alias="REALTIME_METRICS_ADDR")
    # One per realtime process, like REALTIME_WS_ADDRS (Prometheus' targets); default: the one.
    realtime_metrics_addrs: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="REALTIME_METRICS_ADDRS")
    # Envoy's metrics for Prometheus: GET /metrics here answers the admin's /stats/prometheus
    # (the admin stays on 127.0.0.1). Empty: no such listener.
    envoy_metrics_addr: str = Field("127.0.0.1:9105", alias="ENVOY_METRICS_ADDR")
    # Certificate files whose expiry every process exports (posmesh_certificate_expiry_*): the
    # edge's and any other *.pem/*.crt in the certs dir (<data dir>/certs), plus these (comma
    # separated paths).
    metrics_certificate_files: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="METRICS_CERTIFICATE_FILES")

    # Telemetry: OTLP/gRPC export when set, tracing stays in-process (ids in logs) otherwise.
    otel_exporter_otlp_endpoint: str | None = Field(None, alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    otel_sample_ratio: float = Field(1.0, alias="OTEL_SAMPLE_RATIO")

    @field_validator("cors_allowed_origins", "realtime_ws_addrs", "auth_addrs", "staff_addrs",
                     "orders_addrs", "realtime_metrics_addrs", "metrics_certificate_files",
                     mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_allowed_origins")
    @classmethod
    def _no_wildcard(cls, origins: list[str]) -> list[str]:
        if any("*" in origin for origin in origins):
            raise ValueError("CORS_ALLOWED_ORIGINS must list exact origins; wildcards are refused")
        return origins

    @model_validator(mode="after")
    def _mesh_tls_outside_development(self) -> "Settings":
        if not self.mesh_tls and self.env != "development":
            raise ValueError("MESH_TLS=false is for measurements in development only")
        return self

    @property
    def is_development(self) -> bool:
        return self.env == "development"

    @property
    def keys_dir(self) -> Path:
        return self.jwt_keys_dir or self.data_dir / "keys"

    @property
    def certs_dir(self) -> Path:
        return self.data_dir / "certs"

    @property
    def public_url(self) -> str:
        """PUBLIC_BASE_URL without a trailing slash, or the local edge."""
        return (self.public_base_url or f"https://localhost:{self.edge_port}").rstrip("/")

    def service_addr(self, service: str) -> str:
        return getattr(self, f"{service}_addr")

    def service_addrs(self, service: str) -> list[str]:
        """Every replica's address (REPLICATED services; others: their one address)."""
        if service in REPLICATED_SERVICES:
            return getattr(self, f"{service}_addrs") or [self.service_addr(service)]
        return [self.service_addr(service)]

    def replicas(self, service: str) -> int:
        return getattr(self, f"{service}_replicas") if service in REPLICATED_SERVICES else 1

    def metrics_addr(self, service: str) -> str:
        return getattr(self, f"{service}_metrics_addr")

    def metrics_targets(self) -> dict[str, list[str]]:
        """Every service process's metrics address, by service (what Prometheus scrapes)."""
        targets = {service: [self.metrics_addr(service)] for service in ("auth", "staff", "orders")}
        targets["realtime"] = self.realtime_metrics_addrs or [self.realtime_metrics_addr]
        return {service: [addr for addr in addrs if addr] for service, addrs in targets.items()}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The environment's settings; with POSMESH_SECRETS_DIR, also from files in that folder."""
    import os

    folder = os.environ.get("POSMESH_SECRETS_DIR") or None
    return Settings(_secrets_dir=folder) if folder else Settings()
